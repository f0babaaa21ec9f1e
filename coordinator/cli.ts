#!/usr/bin/env node
/**
 * `coordinator`: `start` (a run with its workers: src/coordinator/start.ts), `audit`
 * (src/run/audit.ts) and `export` (a checkpoint as a tfjs LayersModel: src/run/export.ts).
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import type { BertConfig } from '../src/model/config.js';
import { BACKEND_CHOICES, type BackendChoice } from '../src/backend/index.js';
import { createProgram, EXIT_FAILURE, EXIT_USAGE, nonNegativeInt, nonNegativeNumber, positiveInt, positiveNumber, reportErrorsWith, runProgram, UserError } from '../src/cli/common.js';
import { LOG_FORMAT_CHOICES, LOG_FORMAT_ENV, LogConfigError, type LogFormatChoice, Logger, resolveLogFormat } from '../src/log/logger.js';
import { type Application, APPLICATIONS } from '../src/model/build.js';
import { ExportError, exportCheckpoint, OPTIMIZER_STATE_FILE } from '../src/run/export.js';
import { selectBackend } from '../src/backend/index.js';
import { AuditError, auditRun, formatAudit } from '../src/run/audit.js';
import { JournalError } from '../src/run/journal.js';
import { TrainingError } from '../src/train/step.js';
import { readFile } from 'node:fs/promises';
import { AuthConfigError, loadTls } from '../src/comm/auth.js';
import { CoordinatorError } from '../src/coordinator/coordinator.js';
import { ConvertError } from '../src/checkpoint/model-sources.js';
import { startRun } from '../src/coordinator/start.js';
import { type Balance, BALANCES } from '../src/coordinator/shares.js';
import { readRunFile, RUN_FILE_EXAMPLE, RunConfigError } from '../src/coordinator/run-config.js';
import type { OptimizerConfig } from '../src/optim/config.js';
import { ConfigError, parseBertConfig } from '../src/model/config.js';
import { OptimizerConfigError, readOptimizerConfig } from '../src/optim/index.js';
import { DatasetError } from '../src/data/dataset.js';
import { TFRecordError } from '../src/data/tfrecord.js';
import { CheckpointError } from '../src/checkpoint/run-checkpoint.js';
import { LedgerError } from '../src/run/ledger.js';
import { MetricsError, metricsPort } from '../src/metrics/metrics.js';
import { DashboardError } from '../src/dashboard/server.js';

function preset(value: string): string {
  if (!/^L\d+-H\d+$/.test(value)) throw new InvalidArgumentError('expected the form L<layers>-H<hidden>, e.g. L2-H128.');
  return value;
}

interface StartOptions {
  backend: BackendChoice;
  preset?: string;
  bertConfig?: string;
  /** A tfjs LayersModel folder to start from. */
  init?: string;
  /** The run file (run.yaml). */
  config?: string;
  application: Application;
  steps?: number;
  optimizer?: string;
  data?: string;
  clipNorm: number;
  recompute?: boolean;
  seed: number;
  globalBatch: number;
  microBatch: number;
  allreduceCompression: 'none' | 'fp16';
  shardOptimizer: boolean;
  balance: Balance;
  localWorkers?: number;
  pinWorkers?: boolean;
  workers?: number;
  minWorkers: number;
  runDir?: string;
  resume?: string;
  checkpointEvery: number;
  keep: number;
  checksumEvery: number;
  listen: string;
  tokenFile?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  joinTimeout: number;
  rejoinTimeout: number;
  stepTimeout: number;
  heartbeatTimeout: number;
  failureBackoff: number;
  maxFailures: number;
  logEvery: number;
  metricsPort?: number;
  metricsHost: string;
  dashboardPort?: number;
  dashboardHost: string;
  logFormat?: LogFormatChoice;
}

/** Mean of the first and of the last `window` values. */
function endMeans(values: readonly number[], window: number): [number, number] {
  const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const n = Math.max(1, Math.min(window, values.length));
  return [mean(values.slice(0, n)), mean(values.slice(-n))];
}

const DEFAULTS = {
  backend: 'auto' as BackendChoice,
  preset: 'L2-H128',
  application: 'encoder' as Application,
  steps: 200,
  globalBatch: 16,
  checkpointEvery: 50,
  clipNorm: 1,
  seed: 1,
  logEvery: 20,
  optimizer: { type: 'adafactor' as const, learningRate: 0.01 },
};

async function start(opts: StartOptions, command: Command): Promise<void> {
  // first of all: from here on every line, the closing error too, is in the chosen format
  const logger = new Logger({ format: resolveLogFormat(opts.logFormat), name: 'coordinator', textStream: process.stdout });
  reportErrorsWith((program, line, err, withStack) => logger.reportError(program, line, err, withStack));
  if (opts.resume && opts.runDir) throw new UserError('--resume names the run directory already; drop --run-dir');
  // the run file fills what the command line left at its default; the command line wins
  let fileOptimizer: OptimizerConfig | undefined;
  if (opts.config) {
    const { optimizer: fromFile, ...file } = await readRunFile(opts.config);
    const modelOnCli = command.getOptionValueSource('preset') === 'cli' || command.getOptionValueSource('bertConfig') === 'cli';
    for (const [key, value] of Object.entries(file)) {
      if ((key === 'preset' || key === 'bertConfig') && modelOnCli) continue;
      if (command.getOptionValueSource(key) !== 'cli') (opts as unknown as Record<string, unknown>)[key] = value;
    }
    if (command.getOptionValueSource('optimizer') !== 'cli') fileOptimizer = fromFile;
  }
  const listen = /^(.+):(\d{1,5})$/.exec(opts.listen);
  if (!listen) throw new UserError(`--listen ${opts.listen} is not host:port`);
  let model: string | BertConfig = opts.preset ?? DEFAULTS.preset;
  if (opts.bertConfig) {
    let raw: unknown;
    try {
      raw = JSON.parse(await readFile(opts.bertConfig, 'utf8'));
    } catch (e) {
      throw new UserError(`cannot read the model config ${opts.bertConfig}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    model = parseBertConfig(raw, opts.bertConfig);
  } else if (opts.init && opts.preset === undefined) {
    // the model of --init, unless a preset or a config says otherwise (then its shapes are checked against it)
    const { openLayersModelFolder } = await import('../src/checkpoint/model-sources.js');
    model = (await openLayersModelFolder(opts.init).catch((e: Error) => {
      throw new UserError(`--init ${opts.init}: ${e.message}`);
    })).config;
  }
  const optimizer = opts.optimizer ? await readOptimizerConfig(opts.optimizer) : (fileOptimizer ?? DEFAULTS.optimizer);
  const stop = new AbortController();
  const onSignal = (signal: string) => {
    if (stop.signal.aborted) {
      logger.warn(`coordinator: ${signal} again: exiting now, without a checkpoint of the step in progress`, { signal });
      process.exit(130);
    }
    stop.abort();
    logger.info(`coordinator: ${signal}: checkpointing after the current step, then stopping (again to exit at once)`, { signal });
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  const started = performance.now();
  const result = await startRun(
    {
      runDir: opts.runDir,
      resume: opts.resume,
      init: opts.init,
      data: opts.data,
      model,
      application: opts.application,
      optimizer,
      steps: opts.steps ?? DEFAULTS.steps,
      globalBatch: opts.globalBatch,
      microBatch: opts.microBatch,
      allreduceCompression: opts.allreduceCompression,
      shardOptimizer: opts.shardOptimizer,
      balance: opts.balance,
      seed: opts.seed,
      clipNorm: opts.clipNorm,
      recompute: opts.recompute ?? true,
      checkpointEvery: opts.checkpointEvery,
      keep: opts.keep,
      checksumEvery: opts.checksumEvery,
      localWorkers: opts.localWorkers,
      pinWorkers: opts.pinWorkers,
      workers: opts.workers,
      minWorkers: opts.minWorkers,
      backend: opts.backend,
      host: listen[1]!,
      port: Number(listen[2]),
      tokenFile: opts.tokenFile,
      tls: loadTls({ ca: opts.tlsCa, cert: opts.tlsCert, key: opts.tlsKey }),
      tlsFiles: opts.tlsCa && opts.tlsCert && opts.tlsKey ? { ca: opts.tlsCa, cert: opts.tlsCert, key: opts.tlsKey } : undefined,
      joinTimeoutMs: opts.joinTimeout * 1000,
      rejoinTimeoutMs: opts.rejoinTimeout * 1000,
      stepTimeoutMs: opts.stepTimeout * 1000,
      heartbeatTimeoutMs: opts.heartbeatTimeout * 1000,
      failureBackoffMs: opts.failureBackoff * 1000,
      maxFailures: opts.maxFailures,
      logEvery: opts.logEvery,
      metricsPort: opts.metricsPort,
      metricsHost: opts.metricsHost,
      dashboardPort: opts.dashboardPort,
      dashboardHost: opts.dashboardHost,
      log: logger.log,
      logging: logger,
    },
    stop.signal,
  );
  const window = Math.min(opts.logEvery, result.losses.length);
  const [first, last] = result.losses.length > 0 ? endMeans(result.losses, window) : [NaN, NaN];
  const seconds = (performance.now() - started) / 1000;
  logger.info(
    `done: steps ${result.firstStep}-${result.lastStep} in ${seconds.toFixed(1)} s, ` +
      `train loss ${first.toFixed(4)} -> ${last.toFixed(4)} (means of the first and the last ${window} steps), ${Math.round(result.tokensPerSecond)} tokens/s; ` +
      `replicas identical in ${result.replicaChecks} check(s); run directory ${result.runDir} (journal, ${result.checkpoints.length} checkpoint(s)${result.stoppedEarly ? '; stopped early: continue with --run-dir' : ''})`,
    {
      firstStep: result.firstStep,
      lastStep: result.lastStep,
      seconds,
      lossFirst: result.losses.length > 0 ? first : undefined,
      lossLast: result.losses.length > 0 ? last : undefined,
      tokensPerSecond: result.tokensPerSecond,
      replicaChecks: result.replicaChecks,
      runDir: result.runDir,
      checkpoints: result.checkpoints.length,
      stoppedEarly: result.stoppedEarly,
    },
  );
}

function buildProgram(): Command {
  const program = createProgram('coordinator', 'Coordinator of a multi-worker BERT/UniLM pretraining run (tfjs): it owns the data, hands each step\'s records to the workers, commits steps and writes checkpoints.');

  const startCommand = program
    .command('start')
    .description(
      'Start a training run: prepare the sample corpus if no --data, start one local worker per core (--local-workers), ' +
        'train synchronously (workers all-reduce their gradients), checkpoint under runs/<run-id>/. ' +
        'A run directory that holds a run already is continued.',
    )
    .addOption(new Option('--backend <name>', 'tfjs backend (of the local workers): auto takes native tensorflow if installed, else wasm, else cpu').choices(BACKEND_CHOICES).default(DEFAULTS.backend))
    .option('--config <run.yaml>', 'the run file: YAML or JSON whose keys are these options in camelCase (example below); options given here win')
    .addOption(new Option('--preset <L..-H..>', `model size preset: layers and hidden size (default ${DEFAULTS.preset})`).argParser(preset).conflicts('bertConfig'))
    .option('--bert-config <bert_config.json>', 'model from a Google bert_config.json (instead of --preset)')
    .option('--init <dir>', 'start from the weights of this tfjs LayersModel folder (pretrain convert --to tfjs, coordinator export), MLM head included, instead of the seeded initialization; its config is the model unless --preset/--bert-config (then the shapes must agree); the optimizer starts fresh')
    .addOption(new Option('--application <name>', 'encoder: BERT MLM; unilm: seq2seq; lm: left-to-right').choices(APPLICATIONS).default(DEFAULTS.application))
    .option('--steps <n>', `training steps (default ${DEFAULTS.steps})`, positiveInt)
    .option('--data <dir>', 'train on shards made by `pretrain prepare` (mlm: --application encoder; seq2seq: unilm) instead of the sample corpus')
    .option(
      '--optimizer <json|file>',
      'optimizer as inline JSON or a JSON/YAML file, e.g. \'{"type":"adafactor","wrappers":[{"type":"piecewiseLinear","schedule":{"20":1}}]}\' (types: adafactor, adam, adamw, lamb, sgd; default adafactor at learning rate 0.01)',
    )
    .option('--clip-norm <x>', 'clip gradients to this global norm (0: off)', nonNegativeNumber, DEFAULTS.clipNorm)
    .option('--recompute', 'recompute each Transformer block in backprop instead of keeping its activations (default on)')
    .option('--no-recompute', 'keep every activation')
    .option('--seed <n>', 'seed of initial weights, data order, masking and dropout', nonNegativeInt, DEFAULTS.seed)
    .option('--log-every <n>', 'print a progress line every n steps', positiveInt, DEFAULTS.logEvery)
    .option('--global-batch <n>', 'sequences per step, split across the workers', positiveInt, DEFAULTS.globalBatch)
    .option('--micro-batch <n>', 'sequences per micro-batch on a worker (gradients accumulated over its share; 0: the whole share at once)', nonNegativeInt, 0)
    .addOption(new Option('--allreduce-compression <kind>', 'fp16: gradients travel as float16, half the bytes, sums kept in float32 (the loss and counts stay exact); the update then differs from one worker\'s by the rounding (README)').choices(['none', 'fp16']).default('none'))
    .option('--shard-optimizer', 'each worker updates its segment of the parameters and the new values are gathered (ZeRO stage 1) instead of every worker updating all of them; for AdaFactor without a first moment (wrappers: learning-rate schedules only). Pays where the update is a large share of a step, with many workers; two workers on one machine gain nothing (README)', false)
    .option('--no-shard-optimizer', 'every worker runs the whole optimizer update (the default)')
    .addOption(new Option('--balance <how>', 'how a step\'s batch is split across the workers: dynamic (by measured speeds, and the last quarter claimed in pieces by whoever is done first, so a slower core or node does not hold every step back) or even (fixed equal shares: runs with the same workers are bit-reproducible); what is learned is the same either way, within float rounding').choices([...BALANCES]).default('dynamic'))
    .option('--local-workers <n>', 'worker processes to start on this machine (default: one per core; 0: only workers started elsewhere)', nonNegativeInt)
    .option('--pin-workers', 'pin local worker i to the i-th CPU this process may run on (Linux, needs taskset): unpinned, two workers on two vCPUs computed up to 29% slower per sample than one')
    .option('--workers <n>', 'workers the run needs before it starts (default: --local-workers)', positiveInt)
    .option('--min-workers <n>', 'when a worker is lost, the others run its step again while at least n are left; below, the coordinator waits --rejoin-timeout for workers to join, then checkpoints and stops', positiveInt, 1)
    .option('--run-dir <dir>', 'where the journal, checkpoints and prepared sample data go (default runs/run-<date>-<time>); a folder that holds a run already is continued (so a restarted coordinator goes on)')
    .option('--resume <run-dir>', 'continue the run in this directory (like --run-dir, but it must hold a run): from live workers that hold its last committed step, else from its newest complete checkpoint')
    .option('--checkpoint-every <n>', 'checkpoint every n steps (and at the end, and on SIGTERM/SIGINT)', positiveInt, DEFAULTS.checkpointEvery)
    .option('--keep <n>', 'checkpoints to keep', positiveInt, 3)
    .option('--checksum-every <n>', 'compare the replicas\' parameter digests every n steps; a difference stops the run (0: never)', nonNegativeInt, 50)
    .option('--listen <host:port>', 'control address for the workers (127.0.0.1 unless told otherwise; port 0: any free port)', '127.0.0.1:0')
    .option('--token-file <file>', `the run's join token (default: the file in ${'$'}PRETRAIN_TOKEN_FILE, $PRETRAIN_TOKEN, else a new token in <run-dir>/join-token)`)
    .option('--tls-ca <file>', 'mutual TLS: the run\'s CA certificate')
    .option('--tls-cert <file>', 'mutual TLS: the coordinator\'s certificate')
    .option('--tls-key <file>', 'mutual TLS: the coordinator\'s key')
    .option('--join-timeout <s>', 'seconds to wait for the workers to join', positiveNumber, 120)
    .option('--rejoin-timeout <s>', 'below --min-workers: seconds to wait for enough workers to join again before the run checkpoints and stops', positiveNumber, 120)
    .option('--step-timeout <s>', 'seconds a step (and each collective) may take before it is aborted', positiveNumber, 600)
    .option('--heartbeat-timeout <s>', 'seconds without a heartbeat before a worker counts as lost', positiveNumber, 10)
    .option('--failure-backoff <s>', 'a worker (by --name) lost twice within 30 min waits this long before it is taken in again, doubling per further failure up to 5 min (0: never held back)', nonNegativeNumber, 10)
    .option('--max-failures <n>', 'worker losses the run survives; one more and it checkpoints and stops (0: no cap)', nonNegativeInt, 20)
    .option(
      '--metrics-port <n>',
      'serve Prometheus metrics at http://<metrics-host>:<n>/metrics (0: any free port; the address is printed on stderr); the local workers then serve theirs on free ports, ' +
        'and <run-dir>/metrics-targets.json lists them all for Prometheus file_sd (default: no metrics)',
      metricsPort,
    )
    .option('--metrics-host <address>', 'address the metrics (the coordinator\'s and the local workers\') listen on', '127.0.0.1')
    .option(
      '--dashboard-port <n>',
      'serve a live dashboard of the run (loss, learning rate, throughput, step times, workers, events) at http://<dashboard-host>:<n>/ (0: any free port; the URL is printed at start; default: none)',
      metricsPort,
    )
    .option('--dashboard-host <address>', 'address the dashboard listens on; any but a loopback address asks for the run\'s join token', '127.0.0.1')
    .addOption(
      new Option(
        '--log-format <format>',
        `text: readable lines on stdout; json: JSON lines on stdout (time, level, msg, runId, generation, step..., the local workers' lines with localWorker), for Kubernetes and log collectors; auto: text on a terminal, else json (default: ${LOG_FORMAT_ENV}, else auto)`,
      ).choices(LOG_FORMAT_CHOICES),
    )
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  $ coordinator start                                          # sample corpus, one worker per core, L2-H128 MLM, AdaFactor + recompute\n' +
        '  $ coordinator start --data runs/mlm --preset L4-H256 --global-batch 32 --steps 1000\n' +
        '  $ coordinator start --run-dir runs/run-20261201-120000       # continue that run (--resume: it must hold one)\n' +
        '  $ coordinator start --local-workers 0 --workers 4 --listen 0.0.0.0:7070 --token-file token   # workers from other machines\n' +
        '  $ coordinator start --local-workers 1 --application unilm --steps 100   # seq2seq on one worker\n' +
        '  $ coordinator export runs/run-20261201-120000 --out runs/model   # the newest checkpoint as a tfjs LayersModel\n' +
        '  $ coordinator start --metrics-port 9400                      # Prometheus metrics; all targets in <run-dir>/metrics-targets.json\n' +
        '  $ coordinator start --dashboard-port 8080                    # live dashboard at http://127.0.0.1:8080/\n' +
        '  $ pretrain prepare --corpus data/sample/corpus.txt --vocab data/sample/vocab.txt --out runs/mlm --max-length 128\n' +
        `\nA run file (--config run.yaml):\n${RUN_FILE_EXAMPLE.replace(/^/gm, '  ')}`,
    )
    .action(async (opts: StartOptions) => start(opts, startCommand));
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
  program
    .command('export')
    .description(`Write a checkpoint of a run as a tfjs LayersModel (model.json + weights.bin, for tf.loadLayersModel) with the optimizer state beside it (${OPTIMIZER_STATE_FILE})`)
    .argument('<run-dir>', 'the run directory (runs/<id>)')
    .requiredOption('--out <dir>', 'the folder to write the model to (made if missing)')
    .option('--step <n>', 'the checkpoint of this step (default: the newest complete one)', positiveInt)
    .option('--overwrite', 'replace a model already in the --out folder')
    .action(async (runDir: string, opts: { out: string; step?: number; overwrite?: boolean }) => {
      await selectBackend('cpu');
      const result = await exportCheckpoint({ runDir, out: opts.out, step: opts.step, overwrite: opts.overwrite });
      console.log(`exported step ${result.step} (${result.checkpoint}, ${result.weights} weights) to ${result.out}: model.json + weights.bin, ${OPTIMIZER_STATE_FILE}`);
    });
  return program;
}

process.exitCode = await runProgram(buildProgram(), process.argv, [
  [TrainingError, EXIT_FAILURE],
  [ExportError, EXIT_FAILURE],
  [JournalError, EXIT_FAILURE],
  [AuditError, EXIT_FAILURE],
  [CoordinatorError, EXIT_FAILURE],
  [ConvertError, EXIT_USAGE],
  [RunConfigError, EXIT_USAGE],
  [LogConfigError, EXIT_USAGE],
  [AuthConfigError, EXIT_USAGE],
  [ConfigError, EXIT_USAGE],
  [OptimizerConfigError, EXIT_USAGE],
  [DatasetError, EXIT_USAGE],
  [TFRecordError, EXIT_FAILURE],
  [CheckpointError, EXIT_FAILURE],
  [LedgerError, EXIT_FAILURE],
  [MetricsError, EXIT_FAILURE],
  [DashboardError, EXIT_FAILURE],
]);
// the control server's and the workers' handles are closed; a finished run has nothing left to wait for
process.exit();
