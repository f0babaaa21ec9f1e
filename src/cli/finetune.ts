/**
 * `pretrain finetune` (a classifier on a pretrained encoder, with optional FGM) and
 * `pretrain predict` (its labels for new lines, one JSON line each). tfjs is loaded only
 * when one of them runs.
 */
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import * as path from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { decodeLines } from '../data/corpus.js';
import { BertTokenizer } from '../data/tokenizer.js';
import { Vocab } from '../data/vocab.js';
import { checkSets, FinetuneDataError, parseExampleLine, readExamples } from '../finetune/data.js';
import { ClassifierModelError } from '../finetune/model.js';
import { emit, nonNegativeInt, nonNegativeNumber, positiveInt, positiveNumber, UserError } from './common.js';

/** The error classes of these commands whose message is enough (exit 2). */
export const FINETUNE_USER_ERRORS: [new (...args: never[]) => Error, number][] = [
  [FinetuneDataError, 2],
  [ClassifierModelError, 2],
];

function preset(value: string): string {
  if (!/^L\d+-H\d+$/.test(value)) throw new InvalidArgumentError('expected the form L<layers>-H<hidden>, e.g. L2-H128.');
  return value;
}

function share(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !(n >= 0 && n < 1)) throw new InvalidArgumentError(`expected a number in [0, 1), got "${value}".`);
  return n;
}

type BackendName = 'auto' | 'tensorflow' | 'wasm' | 'cpu';

interface FinetuneCliOptions {
  model?: string;
  preset?: string;
  vocab: string;
  train: string;
  dev: string;
  test?: string;
  out: string;
  overwrite?: boolean;
  epochs: number;
  batchSize: number;
  lr: number;
  warmup: number;
  weightDecay: number;
  maxLength: number;
  seed: number;
  adversarial?: 'fgm';
  epsilon?: number;
  recompute?: boolean;
  microBatches?: number;
  clipNorm: number;
  select: 'accuracy' | 'macro-f1';
  optimizer?: string;
  backend: BackendName;
  lowerCase: boolean;
}

async function finetuneCommand(opts: FinetuneCliOptions): Promise<void> {
  if ((opts.model === undefined) === (opts.preset === undefined)) throw new UserError('give the model to fine-tune: --model <dir> (from coordinator export) or --preset L<layers>-H<hidden> (fresh weights, for tests)');
  if (opts.epsilon !== undefined && opts.adversarial === undefined) throw new UserError('--epsilon applies to adversarial training; add --adversarial fgm (or drop --epsilon)');
  if (opts.microBatches !== undefined && opts.microBatches > opts.batchSize) throw new UserError(`--micro-batches ${opts.microBatches} is more than --batch-size ${opts.batchSize}`);
  if (opts.maxLength < 3) throw new UserError(`--max-length ${opts.maxLength} cannot hold [CLS] and [SEP] around any text; use at least 3`);
  if (existsSync(path.join(opts.out, 'model.json')) && !opts.overwrite) throw new UserError(`${opts.out} holds a model already; pass --overwrite to replace it, or choose another --out`);
  const vocabulary = await Vocab.load(opts.vocab);
  const tokenizer = new BertTokenizer(vocabulary, { lowerCase: opts.lowerCase });
  // the data first: a bad line is reported before any model is loaded
  const train = await readExamples(opts.train);
  const dev = await readExamples(opts.dev);
  const test = opts.test === undefined ? undefined : await readExamples(opts.test);
  checkSets(train, [dev, ...(test ? [test] : [])]);

  const { selectBackend } = await import('../backend/index.js');
  const { loadModel } = await import('../checkpoint/layers-model-io.js');
  const { buildTransformer } = await import('../model/build.js');
  const { presetConfig } = await import('../model/config.js');
  const { attentionKind } = await import('../finetune/model.js');
  const { finetune } = await import('../finetune/finetune.js');
  const { readOptimizerConfig } = await import('../optim/index.js');
  const backend = await selectBackend(opts.backend);
  const optimizer = opts.optimizer === undefined ? undefined : await readOptimizerConfig(opts.optimizer);
  let base;
  if (opts.model !== undefined) {
    const stats = await stat(opts.model).catch(() => undefined);
    if (!stats?.isDirectory()) throw new UserError(`--model ${opts.model} is not a folder: give the folder of model.json and weights.bin (coordinator export --out)`);
    try {
      base = await loadModel(opts.model);
    } catch (err) {
      throw new UserError(`cannot load the model in ${opts.model}: ${(err as Error).message}`);
    }
    const kind = attentionKind(base);
    if (kind !== 'padding') console.error(`pretrain: warning: ${opts.model} was pretrained with a ${kind} attention mask (not a bidirectional encoder); fine-tuning keeps that mask`);
  } else {
    base = buildTransformer(presetConfig(opts.preset!, vocabulary.size), { withMlm: false, seed: opts.seed });
  }
  const table = base.layers.find((l) => l.name === 'Embedding-Token');
  const rows = table?.getWeights()[0]?.shape[0];
  if (rows !== undefined && rows !== vocabulary.size) {
    throw new UserError(`--vocab ${opts.vocab} has ${vocabulary.size} tokens but the model's token embedding has ${rows} rows: give the vocabulary the model was pretrained with`);
  }
  const positions = base.layers.find((l) => l.name === 'Embedding-Position')?.getWeights()[0]?.shape[0];
  if (positions !== undefined && opts.maxLength > positions) throw new UserError(`--max-length ${opts.maxLength} is more than the model's ${positions} positions`);
  console.error(`pretrain: backend ${backend.description}`);
  const report = await finetune({
    base,
    baseName: opts.model ?? `fresh ${opts.preset}`,
    tokenizer,
    train,
    dev,
    test,
    epochs: opts.epochs,
    batchSize: opts.batchSize,
    learningRate: opts.lr,
    warmup: opts.warmup,
    weightDecay: opts.weightDecay,
    maxLength: opts.maxLength,
    seed: opts.seed,
    optimizer,
    adversarial: opts.adversarial ? { type: 'fgm', epsilon: opts.epsilon ?? 1 } : undefined,
    recompute: opts.recompute,
    microBatches: opts.microBatches,
    clipNorm: opts.clipNorm,
    selectBy: opts.select,
    out: opts.out,
    log: (line) => console.error(line),
  });
  await emit(JSON.stringify({ out: opts.out, ...report }));
}

interface PredictCliOptions {
  model: string;
  vocab: string;
  batchSize: number;
  backend: BackendName;
}

async function predictCommand(text: string | undefined, opts: PredictCliOptions): Promise<void> {
  const vocabulary = await Vocab.load(opts.vocab);
  const { selectBackend } = await import('../backend/index.js');
  const { loadClassifier, predict } = await import('../finetune/finetune.js');
  await selectBackend(opts.backend);
  const stats = await stat(opts.model).catch(() => undefined);
  if (!stats?.isDirectory()) throw new UserError(`--model ${opts.model} is not a folder: give the --out folder of pretrain finetune`);
  const classifier = await loadClassifier(opts.model);
  const rows = classifier.model.getLayer('Embedding-Token').getWeights()[0]?.shape[0];
  if (rows !== vocabulary.size) throw new UserError(`--vocab ${opts.vocab} has ${vocabulary.size} tokens but the model's token embedding has ${rows} rows: give the vocabulary it was trained with`);
  const tokenizer = new BertTokenizer(vocabulary, { lowerCase: classifier.config.lowerCase });
  const { pairs } = classifier.config;
  const run = async (lines: { line: string; where: string }[]): Promise<void> => {
    const examples = lines.map(({ line, where }) => {
      const e = parseExampleLine(line, where, false, false);
      if ((e.textB !== undefined) !== pairs) {
        throw new FinetuneDataError(`${where}: a ${pairs ? 'single sentence' : 'sentence pair'}, but the model in ${opts.model} classifies ${pairs ? 'sentence pairs (text_a<TAB>text_b)' : 'single sentences'}`);
      }
      return e;
    });
    const predictions = predict(classifier, tokenizer, examples, opts.batchSize);
    for (let i = 0; i < examples.length; i++) {
      const e = examples[i]!;
      const p = predictions[i]!;
      await emit(JSON.stringify(pairs ? { text_a: e.textA, text_b: e.textB, label: p.label, probabilities: p.probabilities } : { text: e.textA, label: p.label, probabilities: p.probabilities }));
    }
  };
  if (text !== undefined && text !== '-') return run([{ line: text, where: 'the argument' }]);
  let batch: { line: string; where: string }[] = [];
  let n = 0;
  for await (const line of decodeLines(process.stdin, 'stdin')) {
    n++;
    if (line.trim() === '') continue;
    batch.push({ line: line.endsWith('\r') ? line.slice(0, -1) : line, where: `stdin:${n}` });
    if (batch.length === opts.batchSize) {
      await run(batch);
      batch = [];
    }
  }
  if (batch.length > 0) await run(batch);
}

const BACKEND = (): Option => new Option('--backend <name>', 'tfjs backend').choices(['auto', 'tensorflow', 'wasm', 'cpu']).default('auto');

/** Adds `finetune` and `predict` to the pretrain program. */
export function addFinetuneCommands(program: Command): void {
  program
    .command('finetune')
    .description(
      'Fine-tune a classifier ([CLS] pooler + softmax) on a pretrained encoder: AdamW with linear warm-up and decay, dev accuracy and macro-F1 after every epoch, ' +
        'the best epoch (by dev accuracy, or --select macro-f1) saved to --out (model.json, weights.bin, labels.json, finetune.json). Last line: one JSON object of the results.',
    )
    .option('--model <dir>', 'the pretrained model (coordinator export --out); its MLM head is left out')
    .addOption(new Option('--preset <L..-H..>', 'a fresh, untrained encoder of this size instead of --model (tests)').argParser(preset).conflicts('model'))
    .requiredOption('--vocab <vocab.txt>', 'the vocabulary the model was pretrained with')
    .requiredOption('--train <file>', 'training data: TSV text<TAB>label or text_a<TAB>text_b<TAB>label, or JSON lines (.jsonl) {"text"|"text_a", "text_b"?, "label"}')
    .requiredOption('--dev <file>', 'evaluated after every epoch (same format); its labels must occur in --train')
    .option('--test <file>', 'evaluated once with the best epoch\'s model')
    .requiredOption('--out <dir>', 'where the best model goes')
    .option('--overwrite', 'replace a model already in --out')
    .option('--epochs <n>', 'passes over the training data', positiveInt, 3)
    .option('--batch-size <n>', 'examples per optimizer step', positiveInt, 32)
    .option('--lr <x>', 'peak learning rate', positiveNumber, 2e-5)
    .option('--warmup <share>', 'share of the steps warming the learning rate up from 0 (then linear decay to 0)', share, 0.1)
    .option('--weight-decay <x>', 'AdamW decoupled weight decay (not on Norm and bias weights)', nonNegativeNumber, 0.01)
    .option('--max-length <n>', 'tokens per example, [CLS] and [SEP] included (longer ones are cut)', positiveInt, 128)
    .option('--seed <n>', 'seed of the new layers\' weights, the data order and dropout', nonNegativeInt, 1)
    .addOption(new Option('--adversarial <method>', 'adversarial training on the token embedding').choices(['fgm']))
    .option('--epsilon <x>', 'FGM: norm of the embedding perturbation (default: 1)', positiveNumber)
    .option('--recompute', 'recompute each Transformer block in the backward pass (less memory)')
    .option('--micro-batches <k>', 'split each batch into k parts and accumulate the gradients (the same result, less memory)', positiveInt)
    .option('--clip-norm <x>', 'global gradient-norm clipping (0: off)', nonNegativeNumber, 0)
    .addOption(new Option('--select <metric>', 'dev metric that picks the best epoch').choices(['accuracy', 'macro-f1']).default('accuracy'))
    .option('--optimizer <json|file>', 'replace the default AdamW + warm-up/decay with an optimizer config (see Optimizers in the README)')
    .addOption(BACKEND())
    .option('--no-lower-case', 'keep case and accents (cased vocabularies)')
    .addHelpText('after', '\nExamples:\n  $ pretrain finetune --model runs/model --vocab vocab.txt --train train.tsv --dev dev.tsv --out runs/cls --epochs 3 --lr 5e-5\n  $ pretrain finetune ... --adversarial fgm --epsilon 1 --recompute --micro-batches 2\n')
    .action(finetuneCommand);
  program
    .command('predict')
    .description('Labels of new lines with a model of pretrain finetune: one JSON line {text, label, probabilities} per input ({text_a, text_b, ...} for sentence pairs).')
    .argument('[text]', 'one input; - or nothing reads one per line from stdin (text, or text_a<TAB>text_b, or a JSON object)')
    .requiredOption('--model <dir>', 'the --out folder of pretrain finetune')
    .requiredOption('--vocab <vocab.txt>', 'the vocabulary it was trained with')
    .option('--batch-size <n>', 'inputs run together', positiveInt, 32)
    .addOption(BACKEND())
    .addHelpText('after', '\nExample:\n  $ pretrain predict --model runs/cls --vocab vocab.txt < lines.txt\n')
    .action(predictCommand);
}
