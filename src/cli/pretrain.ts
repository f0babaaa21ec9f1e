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
import { type Command, Option } from 'commander';
import { createProgram, emit, EXIT_FAILURE, EXIT_USAGE, nonNegativeInt, positiveInt, runProgram, UserError, warn } from './common.js';
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
import { TfCheckpoint, TfCheckpointError } from '../checkpoint/tf-checkpoint.js';
import { ConvertError } from '../checkpoint/model-sources.js';
import { SafetensorsError } from '../checkpoint/safetensors.js';
import { ConfigError } from '../model/config.js';
import { addDecodeCommands, DECODE_USER_ERRORS } from './decode.js';
import { addFinetuneCommands, FINETUNE_USER_ERRORS } from './finetune.js';


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
  addDecodeCommands(program);
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
  ...DECODE_USER_ERRORS,
  [ConvertError, EXIT_USAGE],
  [ConfigError, EXIT_USAGE],
  [TfCheckpointError, EXIT_FAILURE],
  [SafetensorsError, EXIT_FAILURE],
  ...FINETUNE_USER_ERRORS,
  [TFRecordError, EXIT_FAILURE],
  [RangeError, EXIT_FAILURE],
]);
