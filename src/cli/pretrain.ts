#!/usr/bin/env node
/**
 * `pretrain`: the data tools. `tokenize` (text to BERT tokens, ids and offsets) and
 * `inspect` (the records of any TFRecord file of tf.train.Example) print JSON lines;
 * `prepare` and `vocab` come with the rest of the data pipeline; `trie build` makes the
 * prefix tree of KB keys that constrained decoding follows; `generate` decodes with a
 * unilm or lm model (beam search or sampling), one JSON line per input; `checkpoint inspect`
 * lists the variables of a TensorFlow checkpoint; `convert` moves a model between our tfjs
 * LayersModel, Google BERT TF checkpoints and Hugging Face safetensors.
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { createProgram, EXIT_FAILURE, EXIT_USAGE, nonNegativeInt, positiveInt, positiveNumber, runProgram, UserError } from './common.js';
import { decodeExample, ExampleError, exampleToJson } from '../data/example.js';
import { constants, existsSync } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import * as path from 'node:path';
import { writeFileAtomically } from '../checkpoint/atomic-write.js';
import { CorpusError, decodeLines, readLines } from '../data/corpus.js';
import { readRecords, TFRecordError, TFRecordIndex } from '../data/tfrecord.js';
import { SPECIAL_TOKENS, VocabBuilder, VocabSizeError } from '../data/vocab-builder.js';
import { prepare, PrepareError, type PrepareOptions } from '../data/prepare.js';
import { prepareProgress } from '../data/progress.js';
import { BertTokenizer } from '../data/tokenizer.js';
import { Vocab, VocabError } from '../data/vocab.js';
import { buildTrieFromTsv, buildWarnings, loadTrie, TrieError, writeTrie } from '../decode/trie.js';
import { GenerationError, ModelPartsError } from '../decode/errors.js';
import { TfCheckpoint, TfCheckpointError } from '../checkpoint/tf-checkpoint.js';
import { ConvertError } from '../checkpoint/model-sources.js';
import { SafetensorsError } from '../checkpoint/safetensors.js';
import { ConfigError } from '../model/config.js';
import { addFinetuneCommands, FINETUNE_USER_ERRORS } from './finetune.js';

/** Writes a line, waiting when stdout is full (a pipe into a slow reader). */
function emit(line: string): Promise<void> | void {
  if (!process.stdout.write(`${line}\n`)) return new Promise((resolve) => process.stdout.once('drain', () => resolve()));
}

interface InspectOptions {
  start: number;
  limit?: number;
  offsets?: boolean;
}

async function inspect(files: string[], opts: InspectOptions): Promise<void> {
  for (const file of files) {
    // a path that is not a file is the user's mistake (exit 2), not a corrupt file (exit 1)
    const stats = await stat(file).catch(() => undefined);
    if (!stats) throw new UserError(`${file} does not exist`);
    if (!stats.isFile()) throw new UserError(`${file} is ${stats.isDirectory() ? 'a directory' : 'not a regular file'}; give TFRecord files`);
    let printed = 0;
    const print = async (index: number, offset: number, data: Uint8Array): Promise<void> => {
      let json: string;
      try {
        json = exampleToJson(decodeExample(data));
      } catch (err) {
        if (err instanceof ExampleError) throw new TFRecordError(file, offset, `record ${index} is ${err.message}`);
        throw err;
      }
      await emit(opts.offsets || files.length > 1 ? `{"file":${JSON.stringify(file)},"record":${index},"offset":${offset},"features":${json}}` : json);
      printed++;
    };
    if (opts.start > 0) {
      // random access: one verifying pass builds (or reuses) the shard's index
      const index = await TFRecordIndex.open(file);
      if (opts.start >= index.count) throw new UserError(`--start ${opts.start} is past the end of ${file}: it has ${index.count} record(s)${index.count > 0 ? `, numbered 0 to ${index.count - 1}` : ''}`);
      const end = Math.min(index.count, opts.limit === undefined ? index.count : opts.start + opts.limit);
      for (let i = opts.start; i < end; i++) await print(i, index.offsets[i]!, await index.read(i));
    } else {
      for await (const r of readRecords(file)) {
        if (opts.limit !== undefined && printed >= opts.limit) break;
        await print(r.index, r.offset, r.data);
      }
    }
  }
}

interface TokenizeOptions {
  vocab: string;
  lowerCase: boolean;
  maxCharsPerWord: number;
}

function warn(message: string): void {
  console.error(`pretrain: warning: ${message}`);
}

async function tokenize(text: string | undefined, opts: TokenizeOptions): Promise<void> {
  const vocabulary = await Vocab.load(opts.vocab);
  const repeated = vocabulary.repeatedTokensWarning();
  if (repeated) warn(repeated);
  const tokenizer = new BertTokenizer(vocabulary, { lowerCase: opts.lowerCase, maxCharsPerWord: opts.maxCharsPerWord });
  const print = (line: string) => {
    const { ids, offsets } = tokenizer.tokenize(line);
    return emit(JSON.stringify({ text: line, tokens: ids.map((id) => tokenizer.vocab.tokens[id]), ids, offsets }));
  };
  if (text !== undefined && text !== '-') return print(text);
  // one JSON line per input line, streamed: works on whole corpora; invalid UTF-8 stops as it does for prepare
  for await (const line of decodeLines(process.stdin, 'stdin')) await print(line);
}

interface VocabOptions {
  corpus: string[];
  size: number;
  out: string;
  force?: boolean;
  lowerCase: boolean;
}


async function vocab(opts: VocabOptions): Promise<void> {
  if (existsSync(opts.out) && !opts.force) throw new UserError(`${opts.out} exists; pass --force to overwrite it`);
  // fail now rather than after counting a whole corpus
  await access(path.dirname(path.resolve(opts.out)), constants.W_OK).catch(() => {
    throw new UserError(`cannot write ${opts.out}: its folder does not exist or is not writable`);
  });
  const builder = new VocabBuilder({ lowerCase: opts.lowerCase });
  let lines = 0;
  let bytes = 0;
  const started = performance.now();
  for (const file of opts.corpus) {
    for await (const line of readLines(file)) {
      builder.add(line);
      lines++;
      bytes += line.length;
      if (lines % 200_000 === 0) process.stderr.write(`\r${file}: ${lines} lines, ${(bytes / 1e6).toFixed(1)}M characters, ${(bytes / 1e6 / ((performance.now() - started) / 1000)).toFixed(1)}M/s`);
    }
  }
  if (lines >= 200_000) process.stderr.write('\n');
  if (builder.empty) throw new UserError(`the corpus (${opts.corpus.join(', ')}) has no text to build a vocabulary from: it is empty or only whitespace and control characters`);
  const built = builder.build(opts.size);
  await writeFileAtomically(opts.out, (h) => h.writeFile(`${built.tokens.join('\n')}\n`));
  console.log(
    `wrote ${opts.out}: ${built.tokens.length} tokens (${SPECIAL_TOKENS.length} special, ${built.singleChars} CJK characters and punctuation, ${built.tokens.length - SPECIAL_TOKENS.length - built.singleChars} word pieces from ${built.words} distinct words, ${built.merges} merges) from ${lines} lines`,
  );
}

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

type PrepareCliOptions = Omit<PrepareOptions, 'force' | 'onProgress'> & { force?: boolean; progress: boolean };

async function prepareCommand(opts: PrepareCliOptions): Promise<void> {
  // no commander defaults for these two, so that an option given where it does nothing is refused, not ignored
  if (opts.task === 'seq2seq' && opts.masking !== undefined) throw new UserError(`--masking ${opts.masking} applies to --task mlm only (seq2seq instances are not masked); drop --masking`);
  if (opts.copies !== undefined && opts.masking !== 'static') {
    throw new UserError(`--copies ${opts.copies} needs --masking static (${opts.task === 'seq2seq' ? 'seq2seq instances are not masked' : 'dynamic masking, the default, writes the corpus once and masks it afresh every epoch'}); drop --copies${opts.task === 'mlm' ? ' or add --masking static' : ''}`);
  }
  const started = performance.now();
  const progress = opts.progress ? prepareProgress(process.stderr) : undefined;
  const manifest = await prepare({
    ...opts,
    force: opts.force ?? false,
    onProgress: progress?.onProgress,
    onWarning: warn,
  }).finally(() => progress?.stop());
  const seconds = (performance.now() - started) / 1000;
  console.log(
    `wrote ${manifest.records} ${manifest.task} instances (max length ${manifest.maxLength}${manifest.masking ? `, ${manifest.masking.mode} masking` : ''}) in ${manifest.shards.length} shard(s) and ${opts.out}/manifest.json ` +
      `in ${seconds.toFixed(1)} s (${(manifest.records / seconds).toFixed(0)} instances/s)`,
  );
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

/** The shortest decimal that reads back as the same float32 (0.1, not 0.10000000149011612). */
function float32Json(v: number): number | string {
  if (!Number.isFinite(v)) return String(v); // JSON has no NaN or Infinity
  for (let digits = 1; digits < 9; digits++) {
    const shorter = Number(v.toPrecision(digits));
    if (Math.fround(shorter) === v) return shorter;
  }
  return v;
}

async function checkpointInspect(where: string, opts: { values?: number }): Promise<void> {
  // a missing path, checkpoint or shard is the user's to fix (exit 2); damaged or unreadable files exit 1
  const userError = (err: unknown): unknown => (err instanceof TfCheckpointError ? new UserError(err.message, err.problem === 'missing' ? EXIT_USAGE : EXIT_FAILURE) : err);
  const ckpt = await TfCheckpoint.open(where).catch((err: unknown) => {
    throw userError(err);
  });
  try {
    for (const v of ckpt.variables) {
      const line: Record<string, unknown> = { name: v.name, dtype: v.dtype, shape: v.shape };
      if (opts.values !== undefined) {
        try {
          const values = await ckpt.read(v.name);
          line.values = Array.from(values.subarray(0, opts.values), values instanceof Float32Array ? float32Json : (x) => x);
        } catch (err) {
          // a dtype the reader does not read: listed, its values refused in the line; a damaged file stops here
          if (!(err instanceof TfCheckpointError && err.problem === 'unsupported')) throw userError(err);
          line.values = null;
          line.unreadable = err.message;
        }
      }
      await emit(JSON.stringify(line));
    }
  } finally {
    await ckpt.close();
  }
}

interface ConvertCliOptions {
  from: 'tf-checkpoint' | 'safetensors' | 'tfjs';
  to: 'tfjs' | 'safetensors';
  config?: string;
  application?: 'encoder' | 'unilm' | 'lm';
  overwrite?: boolean;
}

async function convertCommand(input: string, output: string, opts: ConvertCliOptions): Promise<void> {
  if (opts.application !== undefined && opts.to !== 'tfjs') throw new UserError('--application applies to --to tfjs only (a Hugging Face BertForMaskedLM has no attention kind to choose); drop it');
  if (!existsSync(input) && !(opts.from === 'tf-checkpoint' && existsSync(`${input}.index`))) throw new UserError(`${input} does not exist`);
  if (opts.to === 'tfjs') {
    // only the tfjs output builds a model
    const { selectBackend } = await import('../backend/index.js');
    await selectBackend('cpu');
  }
  const { convertModel } = await import('../checkpoint/convert.js');
  const started = performance.now();
  const result = await convertModel({ from: opts.from, to: opts.to, input, output, config: opts.config, application: opts.application, overwrite: opts.overwrite });
  for (const note of result.notes) console.error(`pretrain: ${note.startsWith('warning: ') ? note : `note: ${note.replace(/^note: /, '')}`}`);
  const c = result.config;
  console.log(
    `converted ${input} (${opts.from}, config ${result.configFile}) to ${opts.to}: ${result.weights} weights, ${result.parameters} parameters ` +
      `(L${c.num_hidden_layers}-H${c.hidden_size}, vocab ${c.vocab_size})${result.optimizerVariables > 0 ? `, ${result.optimizerVariables} optimizer variables skipped` : ''}; ` +
      `wrote ${result.written.join(', ')} in ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
}

function buildProgram(): Command {
  const program = createProgram('pretrain', 'Data tools for pretraining: build a vocabulary, prepare TFRecord shards, tokenize text, inspect records, list TensorFlow checkpoints');
  program
    .command('tokenize')
    .description('Tokenize text with a BERT vocab.txt: one JSON line {text, tokens, ids, offsets} per input line; offsets are [start, end) in UTF-16 code units of the line.')
    .argument('[text]', 'the text; - or nothing reads lines from stdin')
    .requiredOption('--vocab <vocab.txt>', 'BERT vocabulary, one token per line (needs [CLS], [SEP], [MASK], [UNK])')
    .option('--no-lower-case', 'keep case and accents (cased models)')
    .option('--max-chars-per-word <n>', 'longer words become [UNK] (Google BERT: 200)', positiveInt, 200)
    .addHelpText('after', '\nExamples:\n  $ pretrain tokenize --vocab vocab.txt "今天天气很好 unaffable"\n  $ pretrain tokenize --vocab vocab.txt < corpus.txt > tokens.jsonl\n')
    .action(tokenize);
  program
    .command('prepare')
    .description(
      'Corpus -> TFRecord shards of tf.train.Example + manifest.json. mlm: sentences packed up to --max-length, whole-word masking (jieba words, 15%, 80/10/10); ' +
        'seq2seq: [CLS] source [SEP] target [SEP] from .tsv/.jsonl pairs or from plain text split at a random point.',
    )
    .requiredOption('--corpus <file...>', 'UTF-8 text (documents separated by blank lines, one sentence per line; see --documents); for seq2seq also .tsv or .jsonl pairs')
    .requiredOption('--vocab <vocab.txt>', 'BERT vocabulary (pretrain vocab builds one)')
    .requiredOption('--out <dir>', 'output directory (refused if it exists, unless --force)')
    .addOption(new Option('--task <task>', 'mlm (BERT/RoBERTa) or seq2seq (UniLM)').choices(['mlm', 'seq2seq']).default('mlm'))
    .option('--max-length <n>', 'tokens per instance, [CLS] and [SEP] included', positiveInt, 512)
    .option('--seed <n>', 'seed of masking and split points: the same corpus, vocab and seed give byte-identical shards', nonNegativeInt, 1)
    .addOption(new Option('--masking <mode>', 'mlm only: dynamic stores unmasked ids + word ids and masks afresh every epoch; static masks now (bert4keras files) (default: dynamic)').choices(['dynamic', 'static']))
    .option('--copies <n>', 'with --masking static only: differently masked copies of the corpus to write (default: 1)', positiveInt)
    .option('--records-per-shard <n>', 'instances per shard file', positiveInt, 10_000)
    .addOption(new Option('--documents <format>', 'blank-line: blank lines separate documents; line: one document per line').choices(['blank-line', 'line']).default('blank-line'))
    .option('--no-lower-case', 'keep case and accents (cased vocabularies)')
    .option('--workers <n>', 'threads that segment, tokenize and encode (default: the cores, up to 8; output is the same for any number)', positiveInt)
    .option('--force', 'replace an existing --out directory')
    .option('--no-progress', 'no progress output')
    .addHelpText('after', '\nExamples:\n  $ pretrain prepare --corpus data/sample/corpus.txt --vocab data/sample/vocab.txt --out runs/sample-mlm --max-length 128\n  $ pretrain prepare --task seq2seq --corpus pairs.tsv --vocab vocab.txt --out runs/s2s\n')
    .action(prepareCommand);
  program
    .command('vocab')
    .description('Build a BERT vocab.txt from a corpus: special tokens, every CJK character and punctuation mark seen, then WordPiece units for other scripts up to --size.')
    .requiredOption('--corpus <file...>', 'UTF-8 text files')
    .requiredOption('--size <n>', 'tokens in the vocabulary (at least what the corpus\'s characters need)', positiveInt)
    .requiredOption('--out <vocab.txt>', 'where to write it (refused if it exists, unless --force)')
    .option('--force', 'overwrite --out')
    .option('--no-lower-case', 'keep case and accents (for cased models)')
    .addHelpText('after', '\nExample:\n  $ pretrain vocab --corpus data/sample/corpus.txt --size 6000 --out vocab.txt\n')
    .action(vocab);
  program
    .command('inspect')
    .description(
      'Print the records of TFRecord files of tf.train.Example, one JSON line each: {"<feature name>": {"int64"|"float"|"bytes": [values]}, ...} (bytes in base64); ' +
        'with --offsets or several files: {"file": ..., "record": ..., "offset": ..., "features": {...}}. Verifies both CRCs of every record.',
    )
    .argument('<file...>', 'TFRecord files (ours or any TensorFlow writer\'s)')
    .option('--start <i>', 'first record to print (uses the shard index, built and saved as <file>.index on first use)', nonNegativeInt, 0)
    .option('--limit <n>', 'print at most n records per file', nonNegativeInt)
    .option('--offsets', 'wrap each record with its file, record number and byte offset (always, with several files)')
    .addHelpText('after', '\nExamples:\n  $ pretrain inspect data/train-00000.tfrecord --limit 3\n  $ pretrain inspect shard.tfrecord --start 1000 --limit 1 --offsets\n')
    .action(inspect);
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
  const checkpoint = program.command('checkpoint').description('TensorFlow checkpoints (pretrain checkpoint inspect)');
  checkpoint
    .command('inspect')
    .description(
      'List the variables of a TensorFlow V2 checkpoint (PREFIX.index + PREFIX.data-*), one JSON line each: {"name", "dtype", "shape"}, in name order; ' +
        'with --values n, also "values": the first n numbers (reads each variable whole and checks its CRC32C; float32, float16, bfloat16, int32, and int64 within int32; ' +
        'other dtypes get "values": null and "unreadable": why). No TensorFlow needed.',
    )
    .argument('<path>', 'the checkpoint prefix (bert_model.ckpt), its .index file, or the folder holding it')
    .option('--values <n>', 'print the first n values of each variable', nonNegativeInt)
    .addHelpText('after', '\nExamples:\n  $ pretrain checkpoint inspect chinese_L-12_H-768_A-12/bert_model.ckpt\n  $ pretrain checkpoint inspect chinese_L-12_H-768_A-12 --values 3 | grep -v adam_\n')
    .action(checkpointInspect);
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
  program
    .command('convert')
    .description(
      'Convert a BERT model (weights checked against the config: every missing, unexpected or mis-shaped variable is named) between our tfjs LayersModel, ' +
        'Google BERT TensorFlow checkpoints (read only) and Hugging Face safetensors. --to tfjs writes model.json + weights.bin + bert_config.json ' +
        '(for generate --model, coordinator start --init); --to safetensors writes model.safetensors + config.json for BertForMaskedLM.from_pretrained(OUT).',
    )
    .argument('<in>', 'tfjs: the model folder; safetensors: a folder with model.safetensors (+ config.json) or the file; tf-checkpoint: the prefix (bert_model.ckpt) or its folder')
    .argument('<out>', 'the output folder (made if missing)')
    .addOption(new Option('--from <format>', 'what <in> is').choices(['tf-checkpoint', 'safetensors', 'tfjs']).makeOptionMandatory())
    .addOption(new Option('--to <format>', 'what to write').choices(['tfjs', 'safetensors']).makeOptionMandatory())
    .option('--config <bert_config.json>', 'the model config (Google bert_config.json or Hugging Face config.json); default: config.json or bert_config.json beside <in> (tfjs: read from the model)')
    .addOption(new Option('--application <app>', '--to tfjs: the attention of the model written (default: the input\'s if tfjs, else encoder)').choices(['encoder', 'unilm', 'lm']))
    .option('--overwrite', 'replace a model already in <out>')
    .addHelpText(
      'after',
      '\nExamples:\n  $ pretrain convert --from tf-checkpoint --to tfjs chinese_L-12_H-768_A-12/bert_model.ckpt runs/bert-tfjs\n' +
        '  $ pretrain convert --from tfjs --to safetensors runs/model runs/model-hf      # BertForMaskedLM.from_pretrained("runs/model-hf")\n' +
        '  $ pretrain convert --from safetensors --to tfjs bert-base-chinese/ runs/bert-tfjs --application unilm\n',
    )
    .action(convertCommand);
  addFinetuneCommands(program);
  return program;
}

process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0); // the reader went away (e.g. `| head`)
  throw err;
});
// a corrupt or truncated file (TFRecordError, RangeError from a bad length) exits 1; bad input exits 2
process.exitCode = await runProgram(buildProgram(), process.argv, [
  [VocabError, EXIT_USAGE],
  [VocabSizeError, EXIT_USAGE],
  [CorpusError, EXIT_USAGE],
  [PrepareError, EXIT_USAGE],
  [GenerationError, EXIT_USAGE],
  [ModelPartsError, EXIT_USAGE],
  [ConvertError, EXIT_USAGE],
  [ConfigError, EXIT_USAGE],
  [TfCheckpointError, EXIT_FAILURE],
  [SafetensorsError, EXIT_FAILURE],
  ...FINETUNE_USER_ERRORS,
  [TFRecordError, EXIT_FAILURE],
  [RangeError, EXIT_FAILURE],
]);
