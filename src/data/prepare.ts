import { createRequire } from 'node:module';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomically } from '../checkpoint/atomic-write.js';
import { type DocumentFormat, readDocuments, readLines } from './corpus.js';
import { encodeExample, int64Feature } from './example.js';
import { packDocument, segmentSentence, seq2seqInstance } from './instances.js';
import { BERT_MASKING, maskWholeWords, seededRandom } from './masking.js';
import { type ShardSummary, TFRecordWriter } from './tfrecord.js';
import { BertTokenizer } from './tokenizer.js';
import { Vocab } from './vocab.js';

export const MANIFEST_FILE = 'manifest.json';
export const DATA_FORMAT = 'tfjs-pretrain-data/1';

export type Task = 'mlm' | 'seq2seq';
export type MaskingMode = 'dynamic' | 'static';

export interface PrepareOptions {
  corpus: string[];
  vocab: string;
  out: string;
  task: Task;
  maxLength: number;
  seed: number;
  /** mlm: dynamic stores unmasked ids and word ids (masked per epoch at training), static masks now. */
  masking: MaskingMode;
  /** mlm, static: how many differently masked copies of the corpus to write (bert4keras writes 10). */
  copies: number;
  recordsPerShard: number;
  documents: DocumentFormat;
  lowerCase: boolean;
  force: boolean;
  /** Called with bytes of corpus read so far, of the total, and instances written. */
  onProgress?: (bytesRead: number, bytesTotal: number, instances: number) => void;
}

export class PrepareError extends Error {
  override name = 'PrepareError';
}

export interface Manifest {
  format: typeof DATA_FORMAT;
  task: Task;
  maxLength: number;
  seed: number;
  vocab: { hash: string; size: number };
  lowerCase: boolean;
  masking: null | { mode: MaskingMode; copies: number; rate: number; maskToken: number; randomToken: number; wholeWord: true; segmenter: string };
  /** Feature name -> what it holds; every feature is an int64 list of maxLength values. */
  features: Record<string, string>;
  records: number;
  shards: { file: string; records: number; bytes: number; sha256: string }[];
  corpus: { file: string; bytes: number }[];
}

const FEATURE_DOCS: Record<string, string> = {
  token_ids: 'token ids, [CLS] ... [SEP], padded with [PAD]',
  mask_ids: '0 where nothing is predicted, else the original id + 1 (bert4keras)',
  word_ids: '1-based word of each token (whole-word masking at training time), 0 for specials and padding',
  segment_ids: '0 for [CLS] source [SEP], 1 for target [SEP]',
};

function segmenterVersion(): string {
  const require = createRequire(import.meta.url);
  const pkg = require('@node-rs/jieba/package.json') as { version: string };
  return `@node-rs/jieba ${pkg.version}, default dictionary, no HMM`;
}

/** Seq2seq pairs: `source<TAB>target` lines (.tsv) or JSON lines with `source` and `target` (.jsonl). */
async function* readPairs(file: string): AsyncGenerator<[string, string]> {
  const jsonl = file.endsWith('.jsonl') || file.endsWith('.json');
  let n = 0;
  for await (const line of readLines(file)) {
    n++;
    if (line.trim() === '') continue;
    if (jsonl) {
      let row: unknown;
      try {
        row = JSON.parse(line);
      } catch {
        throw new PrepareError(`${file}:${n}: not a JSON line`);
      }
      const { source, target } = (row ?? {}) as { source?: unknown; target?: unknown };
      if (typeof source !== 'string' || typeof target !== 'string') throw new PrepareError(`${file}:${n}: a pair needs string fields "source" and "target"`);
      yield [source, target];
    } else {
      const tab = line.indexOf('\t');
      if (tab < 0) throw new PrepareError(`${file}:${n}: no tab between source and target`);
      yield [line.slice(0, tab), line.slice(tab + 1)];
    }
  }
}

const isPairs = (file: string) => /\.(tsv|jsonl|json)$/.test(file);

/**
 * Corpus files -> instances -> TFRecord shards of tf.train.Example + manifest.json.
 * Streaming (one document in memory at a time), deterministic (the same corpus, vocab and
 * seed give byte-identical shards), and safe to kill: shards are renamed into place when
 * complete and the manifest, written last, lists only complete shards.
 */
export async function prepare(options: PrepareOptions): Promise<Manifest> {
  const o = options;
  if (!Number.isInteger(o.maxLength) || o.maxLength < 4) throw new PrepareError(`max length must be an integer >= 4, got ${o.maxLength}`);
  if (o.corpus.length === 0) throw new PrepareError('no corpus files given');
  const corpus: { file: string; bytes: number }[] = [];
  for (const file of o.corpus) {
    const stat = await fs.stat(file).catch(() => undefined);
    if (!stat) throw new PrepareError(`corpus file ${file} does not exist`);
    if (!stat.isFile()) throw new PrepareError(`corpus path ${file} is not a file`);
    corpus.push({ file, bytes: stat.size });
  }
  const vocab = await Vocab.load(o.vocab);
  const tokenizer = new BertTokenizer(vocab, { lowerCase: o.lowerCase });

  if (existsSync(o.out)) {
    if (!o.force) throw new PrepareError(`output directory ${o.out} exists; pass --force to replace it`);
    // the manifest goes first: from here on the old data never reads as complete
    await fs.rm(path.join(o.out, MANIFEST_FILE), { force: true });
    for (const f of await fs.readdir(o.out)) if (/^shard-\d+\.tfrecord(\.index)?$/.test(f)) await fs.rm(path.join(o.out, f));
  }
  await fs.mkdir(o.out, { recursive: true });

  const special = { cls: vocab.cls, sep: vocab.sep, pad: vocab.pad };
  const specials = new Set([vocab.cls, vocab.sep, vocab.pad, vocab.mask, vocab.unk]);
  const shards: ShardSummary[] = [];
  let writer: TFRecordWriter | undefined;
  let inShard = 0;
  let records = 0;
  const write = async (example: Uint8Array): Promise<void> => {
    if (!writer || inShard === o.recordsPerShard) {
      if (writer) shards.push(await writer.close());
      writer = await TFRecordWriter.create(path.join(o.out, `shard-${String(shards.length).padStart(5, '0')}.tfrecord`));
      inShard = 0;
    }
    await writer.write(example);
    inShard++;
    records++;
  };

  const total = corpus.reduce((n, c) => n + c.bytes, 0) * (o.task === 'mlm' && o.masking === 'static' ? o.copies : 1);
  let read = 0;
  try {
    const passes = o.task === 'mlm' && o.masking === 'static' ? o.copies : 1;
    for (let copy = 0; copy < passes; copy++) {
      let docIndex = 0;
      for (const { file } of corpus) {
        if (o.task === 'seq2seq' && isPairs(file)) {
          for await (const [source, target] of readPairs(file)) {
            read += Buffer.byteLength(source) + Buffer.byteLength(target) + 2;
            const inst = seq2seqInstance(tokenizer.tokenize(source).ids, tokenizer.tokenize(target).ids, o.maxLength, special);
            await write(encodeExample({ token_ids: int64Feature(inst.tokenIds), segment_ids: int64Feature(inst.segmentIds) }));
            o.onProgress?.(read, total, records);
          }
          continue;
        }
        for await (const doc of readDocuments(file, o.documents)) {
          read += doc.reduce((n, l) => n + Buffer.byteLength(l) + 1, 1);
          const random = seededRandom(o.seed, docIndex, copy);
          docIndex++;
          if (o.task === 'seq2seq') {
            // plain text: a split point drawn uniformly in [1, L - 1)
            const ids = doc.flatMap((line) => tokenizer.tokenize(line).ids);
            if (ids.length < 2) continue;
            const split = ids.length === 2 ? 1 : 1 + Math.floor(random() * (ids.length - 2));
            const inst = seq2seqInstance(ids.slice(0, split), ids.slice(split), o.maxLength, special);
            await write(encodeExample({ token_ids: int64Feature(inst.tokenIds), segment_ids: int64Feature(inst.segmentIds) }));
          } else {
            for (const inst of packDocument(doc.map((line) => segmentSentence(tokenizer, line)), o.maxLength, special)) {
              if (o.masking === 'dynamic') {
                await write(encodeExample({ token_ids: int64Feature(inst.tokenIds), word_ids: int64Feature(inst.wordIds) }));
              } else {
                const masked = maskWholeWords(inst.tokenIds, inst.wordIds, random, { mask: vocab.mask, size: vocab.size, specials });
                await write(encodeExample({ token_ids: int64Feature(masked.tokenIds), mask_ids: int64Feature(masked.maskIds) }));
              }
            }
          }
          o.onProgress?.(read, total, records);
        }
      }
    }
    if (writer) shards.push(await writer.close());
    writer = undefined;
  } catch (err) {
    await writer?.abort();
    throw err;
  }
  if (records === 0) throw new PrepareError(`the corpus (${o.corpus.join(', ')}) gave no instances: it is empty or has no tokens`);

  const featureNames = o.task === 'seq2seq' ? ['token_ids', 'segment_ids'] : o.masking === 'dynamic' ? ['token_ids', 'word_ids'] : ['token_ids', 'mask_ids'];
  const manifest: Manifest = {
    format: DATA_FORMAT,
    task: o.task,
    maxLength: o.maxLength,
    seed: o.seed,
    vocab: { hash: vocab.hash, size: vocab.size },
    lowerCase: o.lowerCase,
    masking: o.task === 'mlm' ? { mode: o.masking, copies: o.masking === 'static' ? o.copies : 0, ...BERT_MASKING, wholeWord: true, segmenter: segmenterVersion() } : null,
    features: Object.fromEntries(featureNames.map((f) => [f, FEATURE_DOCS[f]!])),
    records,
    shards: shards.map((s) => ({ file: path.basename(s.file), records: s.records, bytes: s.bytes, sha256: s.sha256 })),
    corpus,
  };
  await writeFileAtomically(path.join(o.out, MANIFEST_FILE), (h) => h.writeFile(`${JSON.stringify(manifest, null, 2)}\n`));
  return manifest;
}
