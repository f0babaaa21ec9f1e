/**
 * The `pretrain` commands of generation: `generate` (beam search or sampling with a unilm or
 * lm model, one JSON line per input) and `trie build` / `trie inspect` (the prefix tree of KB
 * keys that constrained decoding follows). tfjs is loaded only when `generate` runs.
 */
import { constants, existsSync } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import * as path from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { emit, EXIT_FAILURE, EXIT_USAGE, nonNegativeInt, positiveInt, positiveNumber, UserError, warn } from './common.js';
import { decodeLines } from '../data/corpus.js';
import { BertTokenizer } from '../data/tokenizer.js';
import { Vocab } from '../data/vocab.js';
import { GenerationError, ModelPartsError } from '../decode/errors.js';
import { buildTrieFromTsv, buildWarnings, loadTrie, TrieError, writeTrie } from '../decode/trie.js';

interface GenerateCliOptions {
  model: string;
  vocab: string;
  beam?: number;
  sample?: boolean;
  numSamples?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed: number;
  nBest: number;
  lengthPenalty: number;
  minLength: number;
  maxLength: number;
  ends: number;
  batchSize: number;
  trie?: string;
  application?: 'unilm' | 'lm';
  backend: 'auto' | 'tensorflow' | 'wasm' | 'cpu';
  lowerCase: boolean;
}

/** A finite number, negative ones included (a length penalty below 0 favours short outputs). */
function finiteNumber(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`expected a number, got "${value}".`);
  return n;
}

/** 0 < p <= 1. */
function probability(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !(n > 0 && n <= 1)) throw new InvalidArgumentError(`expected a number in (0, 1], got "${value}".`);
  return n;
}

async function generateCommand(text: string | undefined, opts: GenerateCliOptions): Promise<void> {
  if (opts.sample && opts.beam !== undefined) throw new UserError('--beam and --sample exclude each other: beam search or sampling');
  const samplingOnly = (['numSamples', 'temperature', 'topK', 'topP'] as const).filter((k) => opts[k] !== undefined);
  if (!opts.sample && samplingOnly.length > 0) {
    const flag = samplingOnly[0]!.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
    throw new UserError(`--${flag} applies to sampling only; add --sample (or drop --${flag})`);
  }
  const beams = opts.beam ?? 4;
  if (!opts.sample && opts.nBest > beams) throw new UserError(`--n-best ${opts.nBest} is more than the ${beams} beams; raise --beam`);
  if (opts.sample && opts.nBest !== 1) throw new UserError('--n-best is for beam search; sampling returns --num-samples outputs per input');
  if (opts.minLength >= opts.maxLength) throw new UserError(`--min-length ${opts.minLength} leaves no room to end within --max-length ${opts.maxLength} (which counts the ending [SEP])`);
  const vocabulary = await Vocab.load(opts.vocab);
  // tfjs and the model only now: the data tools start without them
  const { selectBackend } = await import('../backend/index.js');
  const { loadModel } = await import('../checkpoint/layers-model-io.js');
  const { modelApplication, TextGenerator } = await import('../decode/index.js');
  await selectBackend(opts.backend);
  const stats = await stat(opts.model).catch(() => undefined);
  if (!stats?.isDirectory()) throw new UserError(`--model ${opts.model} is not a folder: give the folder of model.json and weights.bin (coordinator export --out)`);
  let model;
  try {
    model = await loadModel(opts.model);
  } catch (err) {
    throw new UserError(`cannot load the model in ${opts.model}: ${(err as Error).message}`);
  }
  const application = modelApplication(model);
  if (opts.application !== undefined && opts.application !== application) {
    throw new UserError(`--application ${opts.application}, but the model in ${opts.model} was built for ${application} (its attention mask); drop --application or give a ${opts.application} model`);
  }
  const generator = new TextGenerator(model, new BertTokenizer(vocabulary, { lowerCase: opts.lowerCase }));
  let constraint;
  if (opts.trie !== undefined) {
    const { loadTrieConstraint } = await import('../decode/trie-constraint.js');
    constraint = await loadTrieConstraint(opts.trie, vocabulary).catch((err: unknown) => {
      throw trieUserError(err);
    });
  }
  const common = { maxLength: opts.maxLength, minLength: opts.minLength, ends: opts.ends, constraint };
  const options = opts.sample
    ? { mode: 'sample' as const, ...common, numSamples: opts.numSamples ?? 1, temperature: opts.temperature ?? 1, topK: opts.topK ?? 0, topP: opts.topP ?? 1, seed: opts.seed }
    : { mode: 'beam' as const, ...common, beams, numReturn: opts.nBest, lengthPenalty: opts.lengthPenalty };
  let decoded = 0;
  const run = async (sources: string[]): Promise<void> => {
    // an input's samples depend on its place in the whole input, not in its batch
    const outputs = generator.generate(sources, options.mode === 'sample' ? { ...options, firstInput: decoded } : options);
    decoded += sources.length;
    for (let i = 0; i < sources.length; i++) {
      await emit(JSON.stringify({ input: sources[i], outputs: outputs[i]!.map((o) => ({ text: o.text, tokens: o.tokens, ids: o.ids, score: o.score, ended: o.ended })) }));
    }
  };
  if (text !== undefined && text !== '-') return run([text]);
  let batch: string[] = [];
  for await (const line of decodeLines(process.stdin, 'stdin')) {
    if (line.trim() === '') continue;
    batch.push(line);
    if (batch.length === opts.batchSize) {
      await run(batch);
      batch = [];
    }
  }
  if (batch.length > 0) await run(batch);
}

interface TrieBuildOptions {
  vocab: string;
  keys: string;
  out: string;
  lowerCase: boolean;
  strict?: boolean;
  force?: boolean;
  progress: boolean;
}

/** A trie error as the CLI reports it: a damaged file exits 1, anything else is the input's fault (2). */
function trieUserError(err: unknown): unknown {
  return err instanceof TrieError ? new UserError(err.message, err.corrupt ? EXIT_FAILURE : EXIT_USAGE) : err;
}

async function trieBuild(opts: TrieBuildOptions): Promise<void> {
  if (existsSync(opts.out) && !opts.force) throw new UserError(`${opts.out} exists; pass --force to overwrite it`);
  await access(path.dirname(path.resolve(opts.out)), constants.W_OK).catch(() => {
    throw new UserError(`cannot write ${opts.out}: its folder does not exist or is not writable`);
  });
  const vocabulary = await Vocab.load(opts.vocab);
  const repeated = vocabulary.repeatedTokensWarning();
  if (repeated) warn(repeated);
  const started = performance.now();
  let lastLog = 0;
  const tty = process.stderr.isTTY === true;
  let progressShown = false;
  const report = await buildTrieFromTsv({
    keys: opts.keys,
    vocab: vocabulary,
    lowerCase: opts.lowerCase,
    strict: opts.strict,
    onProgress: ({ lines, pairs, bytesRead, bytesTotal }) => {
      const seconds = (performance.now() - started) / 1000;
      if (!opts.progress || seconds - lastLog < (tty ? 0.5 : 10)) return;
      lastLog = seconds;
      progressShown = true;
      const line = `trie: ${(bytesRead / 1e6).toFixed(1)}/${(bytesTotal / 1e6).toFixed(1)} MB, ${lines} lines, ${pairs} keys, ${(lines / seconds).toFixed(0)} lines/s`;
      process.stderr.write(tty ? `\r${line}` : `${line}\n`);
    },
  }).catch((err: unknown) => {
    throw trieUserError(err);
  }).finally(() => {
    if (progressShown && tty) process.stderr.write('\n');
  });
  for (const w of buildWarnings(report, opts.keys)) warn(w);
  const bytes = await writeTrie(opts.out, report.trie);
  const t = report.trie;
  const seconds = (performance.now() - started) / 1000;
  console.log(
    `wrote ${opts.out}: ${t.keyCount} keys (${report.pairs} lines, ${t.info.pairs} distinct key-value pairs, ${t.info.strings} distinct values), ` +
      `${t.nodeCount} nodes, longest key ${t.info.maxDepth} tokens; ${(bytes / 2 ** 20).toFixed(1)} MiB, ${(bytes / t.keyCount).toFixed(1)} bytes/key; ` +
      `${seconds.toFixed(1)} s (${(report.pairs / seconds).toFixed(0)} keys/s)`,
  );
}

async function trieInspect(file: string, opts: { vocab?: string }): Promise<void> {
  const vocabulary = opts.vocab === undefined ? undefined : await Vocab.load(opts.vocab);
  const stats = await stat(file).catch(() => undefined);
  if (!stats) throw new UserError(`${file} does not exist`);
  const trie = await loadTrie(file, vocabulary).catch((err: unknown) => {
    throw trieUserError(err);
  });
  const sections = Object.fromEntries(trie.arrays().map(([name, a]) => [name, a.byteLength]));
  await emit(JSON.stringify({ file, bytes: stats.size, ...trie.info, bytesPerKey: Math.round((stats.size / trie.keyCount) * 10) / 10, sections, checksum: 'ok', ...(vocabulary ? { vocab: 'matches' } : {}) }));
}

/** Adds `generate` and `trie build` / `trie inspect` to the `pretrain` program. */
export function addDecodeCommands(program: Command): void {
  const trie = program.command('trie').description('Prefix trees of KB keys for constrained decoding (pretrain trie build, pretrain trie inspect)');
  trie
    .command('build')
    .description(
      'Build a prefix tree from key<TAB>value lines: keys tokenized with the vocabulary (no [CLS]/[SEP]), a key may repeat with several values (the value is the rest of the line). ' +
        'Writes one file (header with the vocabulary\'s size and SHA-256, flat arrays, CRC32C) that decoding loads without rebuilding.',
    )
    .requiredOption('--vocab <vocab.txt>', 'the model\'s BERT vocabulary')
    .requiredOption('--keys <kb.tsv>', 'UTF-8 lines key<TAB>value; blank lines are skipped')
    .requiredOption('--out <kb.trie>', 'where to write the trie (refused if it exists, unless --force)')
    .option('--no-lower-case', 'keep case and accents (cased models)')
    .option('--strict', 'refuse a key with [UNK] tokens (characters the vocabulary lacks) instead of keeping it with a warning')
    .option('--force', 'overwrite --out')
    .option('--no-progress', 'no progress output')
    .addHelpText('after', '\nExample:\n  $ pretrain trie build --vocab vocab.txt --keys kb.tsv --out kb.trie\n')
    .action(trieBuild);
  trie
    .command('inspect')
    .description('Verify a trie file (magic, version, CRC32C) and print its header facts as one JSON line; with --vocab, check it was built with that vocabulary.')
    .argument('<kb.trie>', 'a file from pretrain trie build')
    .option('--vocab <vocab.txt>', 'refuse unless the trie was built with this vocabulary')
    .action(trieInspect);
  program
    .command('generate')
    .description(
      'Generate text with a unilm (seq2seq: source in, target out) or lm (continuation) model exported by `coordinator export`: beam search or sampling, ' +
        'with a key/value cache, several inputs per batch. One JSON line per input: {"input", "outputs": [{"text", "tokens", "ids", "score", "ended"}]}.',
    )
    .argument('[text]', 'the source text; - or nothing reads one source per line from stdin')
    .requiredOption('--model <dir>', 'the model folder (model.json + weights.bin, from coordinator export)')
    .requiredOption('--vocab <vocab.txt>', 'the vocabulary the model was trained with')
    .option('--beam <n>', 'beam search with n beams (the default, with 4)', positiveInt)
    .option('--n-best <n>', 'beam search: outputs per input, best first', positiveInt, 1)
    .option('--length-penalty <x>', 'beam search: rank by log-probability / length^x (0: none; < 0 favours short outputs)', finiteNumber, 1)
    .option('--sample', 'sample instead of beam search')
    .option('--num-samples <n>', 'sampling: outputs per input (default: 1)', positiveInt)
    .option('--temperature <t>', 'sampling: divides the log-probabilities (default: 1)', positiveNumber)
    .option('--top-k <k>', 'sampling: among the k most probable tokens only (default: 0, all)', nonNegativeInt)
    .option('--top-p <p>', 'sampling: among the most probable tokens whose probability reaches p (default: 1)', probability)
    .option('--seed <n>', 'sampling: the seed; the same seed gives the same outputs', nonNegativeInt, 0)
    .option('--max-length <n>', 'most tokens generated, the ending [SEP] included', positiveInt, 32)
    .option('--min-length <n>', 'fewest tokens before the ending [SEP]', nonNegativeInt, 0)
    .option('--ends <n>', 'an output ends at its n-th [SEP] (bert4keras min_ends)', positiveInt, 1)
    .option('--trie <file>', 'only outputs that are keys of this prefix tree')
    .option('--batch-size <n>', 'inputs decoded together', positiveInt, 8)
    .addOption(new Option('--application <app>', 'check that the model is one (read from its attention mask)').choices(['unilm', 'lm']))
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(['auto', 'tensorflow', 'wasm', 'cpu']).default('auto'))
    .option('--no-lower-case', 'keep case and accents (cased vocabularies)')
    .addHelpText('after', '\nExamples:\n  $ pretrain generate --model runs/model --vocab vocab.txt --beam 4 "今天天气怎么样"\n  $ pretrain generate --model runs/model --vocab vocab.txt --sample --top-p 0.9 --num-samples 3 < questions.txt\n')
    .action(generateCommand);
}

/** The decode errors that are the input's fault (exit 2); trie errors are mapped where they arise. */
export const DECODE_USER_ERRORS: [new (...args: never[]) => Error, number][] = [
  [GenerationError, EXIT_USAGE],
  [ModelPartsError, EXIT_USAGE],
];
