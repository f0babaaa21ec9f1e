import { createRequire } from 'node:module';
import { existsSync, promises as fs } from 'node:fs';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import * as path from 'node:path';
import { writeFileAtomically } from '../checkpoint/atomic-write.js';
import { type DocumentFormat, readDocuments, readLines } from './corpus.js';
import { DocumentProcessor } from './document-instances.js';
import { BERT_MASKING } from './masking.js';
import type { BatchRequest, BatchResult, WorkerInit } from './prepare-worker.js';
import { type ShardSummary, TFRecordWriter } from './tfrecord.js';
import { Vocab } from './vocab.js';

export const MANIFEST_FILE = 'manifest.json';
/** 2: sequences unpadded, and a `document` feature (1 had neither). */
export const DATA_FORMAT = 'tfjs-pretrain-data/2';

export type Task = 'mlm' | 'seq2seq';
export type MaskingMode = 'dynamic' | 'static';

export interface PrepareOptions {
  corpus: string[];
  vocab: string;
  out: string;
  task: Task;
  maxLength: number;
  seed: number;
  /** mlm only: dynamic (the default) stores unmasked ids and word ids (masked per epoch at training), static masks now. */
  masking?: MaskingMode;
  /** mlm with static masking only: how many differently masked copies of the corpus to write (default 1; bert4keras writes 10). */
  copies?: number;
  recordsPerShard: number;
  documents: DocumentFormat;
  lowerCase: boolean;
  force: boolean;
  /** Threads that segment, tokenize and encode documents (1: all in this thread). Default: the cores, up to 8. */
  workers?: number;
  /** Called with bytes of corpus read so far, of the total, and instances written. */
  onProgress?: (bytesRead: number, bytesTotal: number, instances: number) => void;
  /** Called with what the run goes on despite (a vocabulary with repeated tokens). */
  onWarning?: (message: string) => void;
}

export class PrepareError extends Error {
  override name = 'PrepareError';
}

export interface Manifest {
  format: typeof DATA_FORMAT;
  task: Task;
  maxLength: number;
  seed: number;
  vocab: { hash: string; size: number; specials: { pad: number; unk: number; cls: number; sep: number; mask: number } };
  lowerCase: boolean;
  masking: null | { mode: MaskingMode; copies: number; rate: number; maskToken: number; randomToken: number; wholeWord: true; segmenter: string };
  /** Feature name -> what it holds; every feature is an int64 list (token_ids and the per-token feature: 1 to maxLength values, equally many). */
  features: Record<string, string>;
  records: number;
  /** Documents read from the corpus (a .tsv/.jsonl pair is one); `document` features are below this. */
  documents: number;
  shards: { file: string; records: number; bytes: number; sha256: string }[];
  corpus: { file: string; bytes: number }[];
}

const FEATURE_DOCS: Record<string, string> = {
  token_ids: 'token ids, [CLS] ... [SEP], unpadded (training pads each batch to its longest sequence with vocab.specials.pad)',
  mask_ids: 'per token: 0 where nothing is predicted, else the original id + 1 (bert4keras)',
  word_ids: 'per token: 1-based word (whole-word masking at training time), 0 for specials',
  segment_ids: 'per token: 0 for [CLS] source [SEP], 1 for target [SEP]',
  document: 'one value: the 0-based index of the source document over all corpus files in order (a .tsv/.jsonl pair is one document), the same in every copy',
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

/** Worker threads, each fed one batch at a time; results come back per request. */
class WorkerPool {
  private readonly idle: Worker[] = [];
  private readonly waiting: { req: BatchRequest; resolve: (r: BatchResult) => void; reject: (e: Error) => void }[] = [];
  private readonly busy = new Map<Worker, { resolve: (r: BatchResult) => void; reject: (e: Error) => void }>();
  private readonly workers: Worker[] = [];

  constructor(count: number, init: WorkerInit) {
    for (let i = 0; i < count; i++) {
      const w = new Worker(new URL('./prepare-worker.js', import.meta.url), { workerData: init });
      w.on('message', (r: BatchResult) => {
        const job = this.busy.get(w)!;
        this.busy.delete(w);
        this.release(w);
        if (r.error) job.reject(new PrepareError(r.error));
        else job.resolve(r);
      });
      w.on('error', (err) => this.fail(new PrepareError(`a prepare worker failed: ${err.message}`)));
      w.on('exit', (code) => {
        if (!this.closing) this.fail(new PrepareError(`a prepare worker exited (code ${code})`));
      });
      this.workers.push(w);
      this.idle.push(w);
    }
  }

  private failed: Error | undefined;
  private closing = false;

  /** A dead worker fails every request, running or waiting: nothing hangs. */
  private fail(err: Error): void {
    this.failed ??= err;
    for (const job of this.busy.values()) job.reject(err);
    this.busy.clear();
    for (const job of this.waiting.splice(0)) job.reject(err);
  }

  run(req: BatchRequest): Promise<BatchResult> {
    return new Promise((resolve, reject) => {
      if (this.failed) return reject(this.failed);
      const w = this.idle.pop();
      if (w) this.start(w, req, resolve, reject);
      else this.waiting.push({ req, resolve, reject });
    });
  }

  private start(w: Worker, req: BatchRequest, resolve: (r: BatchResult) => void, reject: (e: Error) => void): void {
    this.busy.set(w, { resolve, reject });
    w.postMessage(req);
  }

  private release(w: Worker): void {
    const next = this.waiting.shift();
    if (next) this.start(w, next.req, next.resolve, next.reject);
    else this.idle.push(w);
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/**
 * The masking and copies a run uses (masking undefined for seq2seq). An option that would
 * change nothing is refused rather than ignored: the user expected it to do something.
 */
function maskingOptions(o: PrepareOptions): { masking: MaskingMode | undefined; copies: number } {
  if (o.task === 'seq2seq') {
    if (o.masking === 'static') throw new PrepareError('--masking static applies to --task mlm only (seq2seq instances are not masked); drop --masking');
    if (o.copies !== undefined && o.copies !== 1) throw new PrepareError(`--copies ${o.copies} applies to --task mlm --masking static only; drop --copies`);
    return { masking: undefined, copies: 1 };
  }
  const masking = o.masking ?? 'dynamic';
  if (masking !== 'static' && o.copies !== undefined && o.copies !== 1) {
    throw new PrepareError(`--copies ${o.copies} needs --masking static (dynamic masking writes the corpus once and masks it afresh every epoch); add --masking static or drop --copies`);
  }
  return { masking, copies: o.copies ?? 1 };
}

/** Documents per message to a worker: large enough to amortise the messaging. */
const BATCH_DOCUMENTS = 32;

/**
 * Corpus files -> instances -> TFRecord shards of tf.train.Example + manifest.json.
 * Streaming (a few batches of documents in memory, whatever the corpus size), deterministic (the same corpus, vocab and
 * seed give byte-identical shards), and safe to kill: shards are renamed into place when
 * complete and the manifest, written last, lists only complete shards.
 */
export async function prepare(options: PrepareOptions): Promise<Manifest> {
  const o = options;
  const { masking, copies } = maskingOptions(o);
  if (!Number.isInteger(o.maxLength) || o.maxLength < 4) throw new PrepareError(`max length must be an integer >= 4, got ${o.maxLength}`);
  if (o.corpus.length === 0) throw new PrepareError('no corpus files given');
  for (const [name, value] of [['records per shard', o.recordsPerShard], ['copies', copies], ['workers', o.workers ?? 1]] as const) {
    if (!Number.isInteger(value) || value < 1) throw new PrepareError(`${name} must be a positive integer, got ${value}`);
  }
  const corpus: { file: string; bytes: number }[] = [];
  for (const file of o.corpus) {
    const stat = await fs.stat(file).catch(() => undefined);
    if (!stat) throw new PrepareError(`corpus file ${file} does not exist`);
    if (!stat.isFile()) throw new PrepareError(`corpus path ${file} is not a file`);
    corpus.push({ file, bytes: stat.size });
  }
  const vocab = await Vocab.load(o.vocab);
  const repeated = vocab.repeatedTokensWarning();
  if (repeated) o.onWarning?.(repeated);

  if (existsSync(o.out)) {
    if (!(await fs.stat(o.out)).isDirectory()) throw new PrepareError(`--out ${o.out} is a file, not a directory`);
    if (!o.force) throw new PrepareError(`output directory ${o.out} exists; pass --force to replace it`);
    // the manifest goes first: from here on the old data never reads as complete
    await fs.rm(path.join(o.out, MANIFEST_FILE), { force: true });
    // complete shards, their indexes, and temporaries a killed run left behind
    for (const f of await fs.readdir(o.out)) if (/^\.?shard-\d+\.tfrecord(\.index)?(\.tmp-.*)?$/.test(f)) await fs.rm(path.join(o.out, f));
  }
  await fs.mkdir(o.out, { recursive: true });

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

  const passes = masking === 'static' ? copies : 1;
  const total = corpus.reduce((n, c) => n + c.bytes, 0) * passes;
  o.onProgress?.(0, total, 0);
  const job = { task: o.task, masking: masking ?? 'dynamic', maxLength: o.maxLength, seed: o.seed, lowerCase: o.lowerCase };
  const processor = new DocumentProcessor(vocab, job);
  const workers = Math.max(1, Math.floor(o.workers ?? Math.min(availableParallelism(), 8)));
  const pool = workers > 1 ? new WorkerPool(workers, { vocabTokens: [...vocab.tokens], vocabHash: vocab.hash, job }) : undefined;
  // results are written in submission order, whichever thread finishes first
  const inFlight: Promise<BatchResult>[] = [];
  let batchNumber = 0;
  let read = 0;
  let documents = 0;
  const drain = async (keep: number): Promise<void> => {
    while (inFlight.length > keep) {
      const result = await inFlight.shift()!;
      for (const e of result.examples) await write(e);
      o.onProgress?.(read, total, records);
    }
  };
  try {
    for (let copy = 0; copy < passes; copy++) {
      // the same numbering in every copy: a document keeps its index (and held-out status) whatever its masks
      let docIndex = 0;
      let batch: [number, string[]][] = [];
      const submit = async (): Promise<void> => {
        if (batch.length === 0) return;
        const req: BatchRequest = { batch: batchNumber++, copy, docs: batch };
        batch = [];
        if (pool) {
          const result = pool.run(req);
          result.catch(() => undefined); // awaited in order by drain(); this only keeps an early failure from counting as unhandled
          inFlight.push(result);
          await drain(2 * workers);
        } else {
          for (const [index, lines] of req.docs) for (const e of processor.examples(lines, index, copy)) await write(e);
          o.onProgress?.(read, total, records);
        }
      };
      for (const { file } of corpus) {
        if (o.task === 'seq2seq' && isPairs(file)) {
          await submit();
          await drain(0);
          for await (const [source, target] of readPairs(file)) {
            read += Buffer.byteLength(source) + Buffer.byteLength(target) + 2;
            await write(processor.pair(source, target, docIndex++));
            if (records % 1000 === 0) o.onProgress?.(read, total, records);
          }
          continue;
        }
        for await (const doc of readDocuments(file, o.documents)) {
          read += doc.reduce((n, l) => n + Buffer.byteLength(l) + 1, 1);
          batch.push([docIndex++, doc]);
          if (batch.length === BATCH_DOCUMENTS) await submit();
        }
      }
      await submit();
      documents = docIndex;
    }
    await drain(0);
    if (writer) shards.push(await writer.close());
    writer = undefined;
  } catch (err) {
    await Promise.allSettled(inFlight);
    await writer?.abort();
    throw err;
  } finally {
    await pool?.close();
  }
  if (records === 0) throw new PrepareError(`the corpus (${o.corpus.join(', ')}) gave no instances: it is empty or has no tokens`);

  const featureNames = ['token_ids', o.task === 'seq2seq' ? 'segment_ids' : masking === 'static' ? 'mask_ids' : 'word_ids', 'document'];
  const manifest: Manifest = {
    format: DATA_FORMAT,
    task: o.task,
    maxLength: o.maxLength,
    seed: o.seed,
    vocab: { hash: vocab.hash, size: vocab.size, specials: { pad: vocab.pad, unk: vocab.unk, cls: vocab.cls, sep: vocab.sep, mask: vocab.mask } },
    lowerCase: o.lowerCase,
    masking: masking ? { mode: masking, copies: masking === 'static' ? copies : 0, ...BERT_MASKING, wholeWord: true, segmenter: segmenterVersion() } : null,
    features: Object.fromEntries(featureNames.map((f) => [f, FEATURE_DOCS[f]!])),
    records,
    documents,
    shards: shards.map((s) => ({ file: path.basename(s.file), records: s.records, bytes: s.bytes, sha256: s.sha256 })),
    corpus,
  };
  await writeFileAtomically(path.join(o.out, MANIFEST_FILE), (h) => h.writeFile(`${JSON.stringify(manifest, null, 2)}\n`));
  return manifest;
}
