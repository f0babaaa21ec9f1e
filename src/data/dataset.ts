import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Application } from '../model/build.js';
import { type Batch, nextTokenTargets } from '../batch.js';
import { decodeExample } from './example.js';
import { maskWholeWords, seededRandom } from './masking.js';
import { DATA_FORMAT, type Manifest, MANIFEST_FILE } from './prepare.js';
import { readRecords } from './tfrecord.js';

export class DatasetError extends Error {
  override name = 'DatasetError';
}

/** One record: its token ids, its per-token feature (word_ids, mask_ids or segment_ids, by the manifest), unpadded, and its source document. */
export interface DatasetRecord {
  readonly tokenIds: Int32Array;
  readonly second: Int32Array;
  readonly document: number;
}

export interface PreparedDataset {
  readonly dir: string;
  readonly manifest: Manifest;
  readonly records: DatasetRecord[];
}

/**
 * Reads a `pretrain prepare` output folder whole: the manifest, then every shard it lists,
 * checking sizes and record counts against it (the CRCs of every record are checked as it
 * is read). For local runs on small data; the coordinator streams shards instead.
 */
export async function loadDataset(dir: string): Promise<PreparedDataset> {
  const file = path.join(dir, MANIFEST_FILE);
  let manifest: Manifest;
  try {
    manifest = JSON.parse(await fs.readFile(file, 'utf8')) as Manifest;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new DatasetError(code === 'ENOENT' ? `${dir} has no ${MANIFEST_FILE}: make it with \`pretrain prepare --out ${dir}\` (an interrupted prepare leaves none)` : `${file} is unreadable: ${(err as Error).message}`);
  }
  if (manifest.format !== DATA_FORMAT) {
    throw new DatasetError(`${file} has data format ${String(manifest.format)}, this version reads ${DATA_FORMAT}: run \`pretrain prepare\` again to remake ${dir}`);
  }
  const names = Object.keys(manifest.features ?? {});
  const perToken = names.filter((n) => n !== 'token_ids' && n !== 'document');
  const secondName = perToken[0];
  if (!names.includes('token_ids') || !names.includes('document') || perToken.length !== 1 || !secondName) {
    throw new DatasetError(`${file} lists features ${names.join(', ')}; expected token_ids, document and one per-token feature`);
  }
  const records: DatasetRecord[] = [];
  for (const shard of manifest.shards) {
    const shardFile = path.join(dir, shard.file);
    const stat = await fs.stat(shardFile).catch(() => undefined);
    if (!stat) throw new DatasetError(`${shardFile}, listed in the manifest, is missing`);
    if (stat.size !== shard.bytes) throw new DatasetError(`${shardFile} has ${stat.size} bytes, the manifest says ${shard.bytes}: the data changed after prepare`);
    let n = 0;
    for await (const r of readRecords(shardFile)) {
      const ex = decodeExample(r.data);
      const tokens = ex.token_ids;
      const second = ex[secondName];
      const document = ex.document;
      const length = tokens?.values.length ?? 0;
      if (tokens?.kind !== 'int64' || second?.kind !== 'int64' || second.values.length !== length || length < 1 || length > manifest.maxLength) {
        throw new DatasetError(`${shardFile} record ${r.index} does not have int64 token_ids and ${secondName} of one length from 1 to ${manifest.maxLength}`);
      }
      const doc = document?.kind === 'int64' && document.values.length === 1 ? Number(document.values[0]) : -1;
      if (!Number.isSafeInteger(doc) || doc < 0) throw new DatasetError(`${shardFile} record ${r.index} does not have one non-negative int64 document index`);
      records.push({ tokenIds: Int32Array.from(tokens.values, Number), second: Int32Array.from(second.values, Number), document: doc });
      n++;
    }
    if (n !== shard.records) throw new DatasetError(`${shardFile} has ${n} records, the manifest says ${shard.records}`);
  }
  return { dir, manifest, records };
}

/** Which application a dataset's task trains. */
export function checkApplication(manifest: Manifest, application: Application, dir: string): void {
  const ok = manifest.task === 'seq2seq' ? application === 'unilm' : application === 'encoder' || (application === 'lm' && manifest.masking?.mode === 'dynamic');
  if (!ok) {
    const want = manifest.task === 'seq2seq' ? 'unilm' : 'encoder (or lm with dynamic masking)';
    throw new DatasetError(`the data in ${dir} is for the ${manifest.task} task; use --application ${want}`);
  }
}

/**
 * The batch of records `indices`, padded to its longest record with the vocabulary's pad
 * id (segment 0, no target): MLM with dynamic masking masks here, from
 * (seed, epoch, record), so every epoch sees new masks; static masks come from the file;
 * unilm and lm predict the next token.
 */
export function batchOf(data: PreparedDataset, indices: readonly number[], application: Application, seed: number, epoch: number): Batch {
  const { manifest } = data;
  const length = indices.reduce((n, r) => Math.max(n, data.records[r]!.tokenIds.length), 1);
  const batchSize = indices.length;
  const { specials, size } = manifest.vocab;
  const tokenIds = new Int32Array(batchSize * length).fill(specials.pad);
  const segmentIds = new Int32Array(batchSize * length);
  let targets: Int32Array = new Int32Array(batchSize * length);
  const special = new Set(Object.values(specials));
  indices.forEach((r, b) => {
    const rec = data.records[r]!;
    const at = b * length;
    if (manifest.task === 'seq2seq') {
      tokenIds.set(rec.tokenIds, at);
      segmentIds.set(rec.second, at);
    } else if (application === 'lm') {
      tokenIds.set(rec.tokenIds, at);
    } else if (manifest.masking?.mode === 'static') {
      tokenIds.set(rec.tokenIds, at);
      rec.second.forEach((m, i) => (targets[at + i] = m > 0 ? m - 1 : 0));
    } else {
      const masked = maskWholeWords(rec.tokenIds, rec.second, seededRandom(seed, epoch, r), { mask: specials.mask, size, specials: special });
      tokenIds.set(masked.tokenIds, at);
      masked.maskIds.forEach((m, i) => (targets[at + i] = m > 0 ? m - 1 : 0));
    }
  });
  if (application !== 'encoder') {
    targets = nextTokenTargets(application, batchSize, length, tokenIds, segmentIds);
    // nextTokenTargets knows padding as id 0 only: never predict the vocabulary's pad, whatever its id
    indices.forEach((r, b) => targets.fill(0, b * length + data.records[r]!.tokenIds.length - 1, (b + 1) * length));
  }
  return { batchSize, length, tokenIds, segmentIds, targets };
}

/** Which records train and which are held out for evaluation, by source document. */
export interface DatasetSplit {
  readonly train: number[];
  readonly heldOut: number[];
  /** Distinct source documents among the records, and how many of them are held out. */
  readonly documents: number;
  readonly heldOutDocuments: number;
}

/**
 * Holds out every `heldOutEvery`-th source document (index % heldOutEvery === heldOutEvery - 1),
 * all its records: a document's records (its windows, its masked copies) share text, so
 * splitting one between training and evaluation would leak. With too few documents for
 * that, the last document is held out, as long as one is left to train on.
 */
export function splitByDocument(records: readonly { readonly document: number }[], heldOutEvery = 20): DatasetSplit {
  const documents = new Set(records.map((r) => r.document));
  let held = new Set([...documents].filter((d) => d % heldOutEvery === heldOutEvery - 1));
  if (held.size === 0 && documents.size >= 2) held = new Set([[...documents].reduce((a, b) => Math.max(a, b))]);
  const train: number[] = [];
  const heldOut: number[] = [];
  records.forEach((r, i) => (held.has(r.document) ? heldOut : train).push(i));
  return { train, heldOut, documents: documents.size, heldOutDocuments: held.size };
}

/** The split in words, for a run's data line. */
export function describeSplit(split: DatasetSplit): string {
  const docs = (n: number) => `${n} document${n === 1 ? '' : 's'}`;
  if (split.heldOut.length === 0) return `${split.train.length} training records from ${docs(split.documents)}, none held out (evaluation uses training records)`;
  return `${split.train.length} training / ${split.heldOut.length} held-out records (${docs(split.heldOutDocuments)} of ${split.documents} held out)`;
}

/** Endless batches over `train`, reshuffled every epoch from the seed. */
export function* datasetBatches(data: PreparedDataset, train: readonly number[], application: Application, batchSize: number, seed: number): Generator<Batch> {
  if (train.length === 0) throw new DatasetError(`${data.dir} has no training records`);
  for (let epoch = 0; ; epoch++) {
    const order = [...train];
    const random = seededRandom(seed, 0x5eed, epoch);
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    for (let i = 0; i + batchSize <= order.length || (i === 0 && order.length < batchSize); i += batchSize) {
      yield batchOf(data, order.slice(i, i + batchSize), application, seed, epoch);
    }
  }
}
