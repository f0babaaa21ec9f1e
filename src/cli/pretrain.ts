#!/usr/bin/env node
/**
 * `pretrain`: the data tools. `tokenize` (text to BERT tokens, ids and offsets) and
 * `inspect` (the records of any TFRecord file of tf.train.Example) print JSON lines;
 * `prepare` and `vocab` come with the rest of the data pipeline.
 */
import { createInterface } from 'node:readline';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { decodeExample, ExampleError, exampleToJson } from '../data/example.js';
import { existsSync } from 'node:fs';
import { writeFileAtomically } from '../checkpoint/atomic-write.js';
import { CorpusError, readLines } from '../data/corpus.js';
import { readRecords, TFRecordError, TFRecordIndex } from '../data/tfrecord.js';
import { VocabBuilder, VocabSizeError } from '../data/vocab-builder.js';
import { BertTokenizer } from '../data/tokenizer.js';
import { Vocab, VocabError } from '../data/vocab.js';

const EXIT_USAGE = 2;
/** A file that is not what it claims (corrupt, truncated, not a tf.train.Example). */
const EXIT_BAD_DATA = 1;

function nonNegativeInt(value: string): number {
  const n = Number(value);
  if (!/^\s*\d+\s*$/.test(value) || !Number.isSafeInteger(n)) throw new InvalidArgumentError('expected a non-negative integer.');
  return n;
}

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

function positiveInt(value: string): number {
  const n = nonNegativeInt(value);
  if (n === 0) throw new InvalidArgumentError('expected a positive integer.');
  return n;
}

interface TokenizeOptions {
  vocab: string;
  lowerCase: boolean;
  maxCharsPerWord: number;
}

async function tokenize(text: string | undefined, opts: TokenizeOptions): Promise<void> {
  const tokenizer = new BertTokenizer(await Vocab.load(opts.vocab), { lowerCase: opts.lowerCase, maxCharsPerWord: opts.maxCharsPerWord });
  const print = (line: string) => {
    const { ids, offsets } = tokenizer.tokenize(line);
    return emit(JSON.stringify({ text: line, tokens: ids.map((id) => tokenizer.vocab.tokens[id]), ids, offsets }));
  };
  if (text !== undefined && text !== '-') return print(text);
  // one JSON line per input line, streamed: works on whole corpora
  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) await print(line);
}

interface VocabOptions {
  corpus: string[];
  size: number;
  out: string;
  force?: boolean;
  lowerCase: boolean;
}

/** Bad input the user can fix (paths, sizes): one line on stderr, exit code 2. */
class UsageError extends Error {}

async function vocab(opts: VocabOptions): Promise<void> {
  if (existsSync(opts.out) && !opts.force) throw new UsageError(`${opts.out} exists; pass --force to overwrite it`);
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
  const built = builder.build(opts.size);
  await writeFileAtomically(opts.out, (h) => h.writeFile(`${built.tokens.join('\n')}\n`));
  console.error(
    `wrote ${opts.out}: ${built.tokens.length} tokens (5 special, ${built.singleChars} CJK characters and punctuation, ${built.tokens.length - 5 - built.singleChars} word pieces from ${built.words} distinct words, ${built.merges} merges) from ${lines} lines`,
  );
}

function buildProgram(): Command {
  const program = new Command('pretrain').description('Data tools for pretraining: tokenize text, inspect TFRecord shards (prepare and vocab come next)').showSuggestionAfterError().exitOverride();
  program
    .command('tokenize')
    .description('Tokenize text with a BERT vocab.txt: one JSON line {text, tokens, ids, offsets} per input line; offsets are [start, end) in UTF-16 code units of the line.')
    .argument('[text]', 'the text; - or nothing reads lines from stdin')
    .requiredOption('--vocab <vocab.txt>', 'BERT vocabulary, one token per line (needs [CLS], [SEP], [MASK], [UNK])')
    .option('--no-lower-case', 'keep case and accents (cased models)')
    .option('--max-chars-per-word <n>', 'longer words become [UNK]', positiveInt, 100)
    .addHelpText('after', '\nExamples:\n  $ pretrain tokenize --vocab vocab.txt "今天天气很好 unaffable"\n  $ pretrain tokenize --vocab vocab.txt < corpus.txt > tokens.jsonl\n')
    .action(tokenize);
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
    .description('Print the records of TFRecord files of tf.train.Example as JSON lines: {"feature": {"int64"|"float"|"bytes": [...]}}; bytes in base64. Verifies both CRCs of every record.')
    .argument('<file...>', 'TFRecord files (ours or any TensorFlow writer\'s)')
    .option('--start <i>', 'first record to print (uses the shard index, built and saved as <file>.index on first use)', nonNegativeInt, 0)
    .option('--limit <n>', 'print at most n records per file', nonNegativeInt)
    .option('--offsets', 'wrap each record with its file, record number and byte offset')
    .addHelpText('after', '\nExamples:\n  $ pretrain inspect data/train-00000.tfrecord --limit 3\n  $ pretrain inspect shard.tfrecord --start 1000 --limit 1 --offsets\n')
    .action(inspect);
  return program;
}

async function main(): Promise<void> {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0); // the reader went away (e.g. `| head`)
    throw err;
  });
  try {
    await buildProgram().parseAsync(process.argv);
  } catch (err) {
    if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : EXIT_USAGE);
    if (err instanceof VocabError || err instanceof VocabSizeError || err instanceof CorpusError || err instanceof UsageError) {
      console.error(`pretrain: ${err.message}`);
      process.exit(EXIT_USAGE);
    }
    if (err instanceof TFRecordError || err instanceof RangeError) {
      console.error(`pretrain: ${err.message}`);
      process.exit(EXIT_BAD_DATA);
    }
    throw err;
  }
}

await main();
