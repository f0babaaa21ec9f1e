#!/usr/bin/env node
/**
 * `coordinator`: today only `coordinator start --local`, a single-process training run on
 * the built-in corpus. The distributed coordinator (rendezvous, workers, gRPC all-reduce)
 * comes in later issues.
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { BACKEND_CHOICES, type BackendChoice } from '../src/backend/index.js';
import { createProgram, EXIT_FAILURE, EXIT_USAGE, nonNegativeInt, nonNegativeNumber, positiveInt, positiveNumber, runProgram, UserError } from '../src/cli/common.js';
import { type Application, APPLICATIONS } from '../src/model/build.js';
import { LOCAL_DEFAULTS, LocalRunError, runLocal, SaveFailedError } from '../src/train/local-run.js';
import { AuditError, auditRun, formatAudit } from '../src/run/audit.js';
import { JournalError } from '../src/run/journal.js';
import { TrainingError } from '../src/train/step.js';

function preset(value: string): string {
  if (!/^L\d+-H\d+$/.test(value)) throw new InvalidArgumentError('expected the form L<layers>-H<hidden>, e.g. L2-H128.');
  return value;
}

interface StartOptions {
  local?: boolean;
  backend: BackendChoice;
  preset?: string;
  config?: string;
  application: Application;
  steps: number;
  batchSize: number;
  seqLength: number;
  lr: number;
  optimizer?: string;
  data?: string;
  clipNorm: number;
  recompute?: boolean;
  microBatches: number;
  seed: number;
  save?: string | false;
  overwrite?: boolean;
  logEvery: number;
}

/** A new folder per run, so that a run never replaces an earlier run's model unasked. */
function defaultSaveDir(now = new Date()): string {
  const two = (n: number) => String(n).padStart(2, '0');
  const stamp = `${now.getFullYear()}${two(now.getMonth() + 1)}${two(now.getDate())}-${two(now.getHours())}${two(now.getMinutes())}${two(now.getSeconds())}`;
  return `runs/local/${stamp}`;
}

/** Mean of the first and of the last `window` values. */
function endMeans(values: readonly number[], window: number): [number, number] {
  const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const n = Math.max(1, Math.min(window, values.length));
  return [mean(values.slice(0, n)), mean(values.slice(-n))];
}

function buildProgram(): Command {
  const program = createProgram('coordinator', 'Coordinator of a multi-worker BERT/UniLM pretraining run (tfjs). For now only a single-process local run is built.');

  program
    .command('start')
    .description(
      'Start a training run. With --local: train in this process on the built-in corpus (a stand-in of Tang poems) ' +
        'and save the model. The distributed coordinator (without --local) is not built yet.',
    )
    .option('--local', 'run a single-process training run (no coordinator, no workers)')
    .addOption(new Option('--backend <name>', 'tfjs backend: auto takes native tensorflow if installed, else wasm, else cpu').choices(BACKEND_CHOICES).default(LOCAL_DEFAULTS.backend))
    .addOption(new Option('--preset <L..-H..>', `model size preset: layers and hidden size (default ${LOCAL_DEFAULTS.preset})`).argParser(preset).conflicts('config'))
    .option('--config <bert_config.json>', 'model from a Google bert_config.json (instead of --preset)')
    .addOption(new Option('--application <name>', 'encoder: BERT MLM; unilm: seq2seq (first half of a poem -> second); lm: left-to-right').choices(APPLICATIONS).default(LOCAL_DEFAULTS.application))
    .option('--steps <n>', 'training steps', positiveInt, LOCAL_DEFAULTS.steps)
    .option('--batch-size <n>', 'sequences per step', positiveInt, LOCAL_DEFAULTS.batchSize)
    .option('--data <dir>', 'train on shards made by `pretrain prepare` (mlm: --application encoder; seq2seq: unilm) instead of the built-in corpus')
    .addOption(new Option('--seq-length <n>', 'tokens per sequence of the built-in corpus (truncated/padded); not with --data, whose sequences keep the length prepare gave them').argParser(positiveInt).default(LOCAL_DEFAULTS.seqLength).conflicts('data'))
    .addOption(new Option('--lr <x>', 'learning rate of the default optimizer (Adam)').argParser(positiveNumber).default(LOCAL_DEFAULTS.learningRate).conflicts('optimizer'))
    .option(
      '--optimizer <json|file>',
      'optimizer as inline JSON or a JSON/YAML file, e.g. \'{"type":"adafactor","wrappers":[{"type":"piecewiseLinear","schedule":{"20":1}}]}\' (types: adafactor, adam, adamw, lamb, sgd)',
    )
    .option('--clip-norm <x>', 'clip gradients to this global norm (0: off)', nonNegativeNumber, LOCAL_DEFAULTS.clipNorm)
    .option('--recompute', 'recompute each Transformer block in backprop instead of keeping its activations')
    .option('--micro-batches <n>', 'split each batch into n micro-batches (at most the batch size) and accumulate their gradients: the same result with less memory', positiveInt, LOCAL_DEFAULTS.microBatches)
    .option('--seed <n>', 'seed of data order, masking and dropout', nonNegativeInt, LOCAL_DEFAULTS.seed)
    .option('--save <dir>', 'save the trained model (tfjs LayersModel: model.json + weights.bin) and the optimizer state to this folder (default: a new folder runs/local/<date>-<time>); checked before training')
    .option('--overwrite', 'replace a model already saved in the --save folder')
    .option('--no-save', 'do not save the model')
    .option('--log-every <n>', 'print a progress line every n steps', positiveInt, LOCAL_DEFAULTS.logEvery)
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  $ coordinator start --local                                  # 120 steps of L2-H128 MLM on wasm (~15 s)\n' +
        '  $ coordinator start --local --application unilm --steps 100\n' +
        '  $ coordinator start --local --config bert_config.json --backend tensorflow\n' +
        '  $ coordinator start --local --optimizer optimizer.yaml --recompute\n' +
        '  $ pretrain prepare --corpus data/sample/corpus.txt --vocab data/sample/vocab.txt --out runs/mlm --max-length 128 \\\n' +
        '      && coordinator start --local --data runs/mlm\n',
    )
    .action(async (opts: StartOptions) => {
      if (!opts.local) {
        throw new LocalRunError(
          'the distributed coordinator (rendezvous, workers, all-reduce) is not built yet; ' +
            '`coordinator start --local` runs a single-process training run on the built-in corpus',
        );
      }
      const started = performance.now();
      const summary = await runLocal({
        backend: opts.backend,
        preset: opts.preset,
        bertConfigPath: opts.config,
        application: opts.application,
        steps: opts.steps,
        batchSize: opts.batchSize,
        seqLength: opts.seqLength,
        learningRate: opts.lr,
        optimizer: opts.optimizer,
        dataDir: opts.data,
        clipNorm: opts.clipNorm,
        recompute: opts.recompute,
        microBatches: opts.microBatches,
        seed: opts.seed,
        saveDir: opts.save === false ? undefined : (opts.save ?? defaultSaveDir()),
        overwrite: opts.overwrite,
        logEvery: opts.logEvery,
      });
      const window = Math.min(opts.logEvery, summary.steps);
      const [first, last] = endMeans(summary.losses, window);
      console.log(
        `done: ${summary.steps} steps in ${((performance.now() - started) / 1000).toFixed(1)} s, ` +
          `train loss ${first.toFixed(4)} -> ${last.toFixed(4)} (means of the first and the last ${window} steps), ` +
          `${Math.round(summary.tokensPerSecond)} tokens/s on ${summary.backend}`,
      );
    });
  program
    .command('audit')
    .description('Report, per epoch of a run, the records consumed exactly once, missing and repeated, from its journal (exit 1 if any is missing or repeated)')
    .argument('<run-dir>', 'the run directory (runs/<id>), holding journal.tfrecord and the checkpoints')
    .option('--json', 'print the report as JSON')
    .action(async (runDir: string, opts: { json?: boolean }) => {
      const audit = await auditRun(runDir).catch((err: unknown) => {
        // no journal at that path is a mistake in the command; a damaged one is a failure
        throw err instanceof JournalError && err.offset === undefined ? new UserError(err.message) : err;
      });
      console.log(opts.json ? JSON.stringify(audit, null, 2) : formatAudit(audit));
      if (!audit.ok) throw new AuditError(`the audit of ${runDir} found records missing or repeated, or a journal at odds with its checkpoint (see above)`);
    });
  return program;
}

process.exitCode = await runProgram(buildProgram(), process.argv, [
  [LocalRunError, EXIT_USAGE],
  [TrainingError, EXIT_FAILURE],
  [SaveFailedError, EXIT_FAILURE],
  [JournalError, EXIT_FAILURE],
  [AuditError, EXIT_FAILURE],
]);
