import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Application } from '../model/build.js';
import { type Batch, nextTokenTargets } from '../batch.js';
import { decodeExample, type Example, ExampleError } from './example.js';
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
 * Reads and checks a `pretrain prepare` folder's manifest: its data format, and that it
 * lists token_ids, document and exactly one per-token feature (whose name it returns).
 */
export async function readManifest(dir: string): Promise<{ manifest: Manifest; perTokenFeature: string }> {
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
  const perTokenFeature = perToken[0];
  if (!names.includes('token_ids') || !names.includes('document') || perToken.length !== 1 || !perTokenFeature) {
    throw new DatasetError(`${file} lists features ${names.join(', ')}; expected token_ids, document and one per-token feature`);
  }
  return { manifest, perTokenFeature };
}

/** A shard listed in the manifest, checked to exist with the size the manifest gives. */
export async function checkShardSize(dir: string, shard: Manifest['shards'][number]): Promise<string> {
  const shardFile = path.join(dir, shard.file);
  const stat = await fs.stat(shardFile).catch(() => undefined);
  if (!stat) throw new DatasetError(`${shardFile}, listed in the manifest, is missing`);
  if (stat.size !== shard.bytes) throw new DatasetError(`${shardFile} has ${stat.size} bytes, the manifest says ${shard.bytes}: the data changed after prepare`);
  return shardFile;
}

/** The error for a shard whose record count disagrees with the manifest. */
export function recordCountError(shardFile: string, records: number, shard: Manifest['shards'][number]): DatasetError {
  return new DatasetError(`${shardFile} has ${records} records, the manifest says ${shard.records}`);
}

/**
 * One record's tf.train.Example bytes as a DatasetRecord, checked against the manifest;
 * `where` names the record in errors (shard file and record number).
 */
export function decodeRecord(bytes: Uint8Array, manifest: Manifest, perTokenFeature: string, where: string): DatasetRecord {
  let ex: Example;
  try {
    ex = decodeExample(bytes);
  } catch (err) {
    // workers decode bytes sent over the network: say which record they were
    if (err instanceof ExampleError) throw new DatasetError(`${where} is ${err.message}`);
    throw err;
  }
  const tokens = ex.token_ids;
  const second = ex[perTokenFeature];
  const document = ex.document;
  const length = tokens?.values.length ?? 0;
  if (tokens?.kind !== 'int64' || second?.kind !== 'int64' || second.values.length !== length || length < 1 || length > manifest.maxLength) {
    throw new DatasetError(`${where} does not have int64 token_ids and ${perTokenFeature} of one length from 1 to ${manifest.maxLength}`);
  }
  const doc = document?.kind === 'int64' && document.values.length === 1 ? Number(document.values[0]) : -1;
  if (!Number.isSafeInteger(doc) || doc < 0) throw new DatasetError(`${where} does not have one non-negative int64 document index`);
  return { tokenIds: Int32Array.from(tokens.values, Number), second: Int32Array.from(second.values, Number), document: doc };
}

/**
 * Reads a `pretrain prepare` output folder whole: the manifest, then every shard it lists,
 * checking sizes and record counts against it (the CRCs of every record are checked as it
 * is read). For tests and small local runs; training at scale reads through RecordStore.
 */
export async function loadDataset(dir: string): Promise<PreparedDataset> {
  const { manifest, perTokenFeature } = await readManifest(dir);
  const records: DatasetRecord[] = [];
  for (const shard of manifest.shards) {
    const shardFile = await checkShardSize(dir, shard);
    let n = 0;
    for await (const r of readRecords(shardFile)) {
      records.push(decodeRecord(r.data, manifest, perTokenFeature, `${shardFile} record ${r.index}`));
      n++;
    }
    if (n !== shard.records) throw recordCountError(shardFile, n, shard);
  }
  return { dir, manifest, records };
}

/** That the application trains the dataset's task, and that the data pads with id 0 as the model expects. */
export function checkApplication(manifest: Manifest, application: Application, dir: string): void {
  const ok = manifest.task === 'seq2seq' ? application === 'unilm' : application === 'encoder' || (application === 'lm' && manifest.masking?.mode === 'dynamic');
  if (!ok) {
    const want = manifest.task === 'seq2seq' ? 'unilm' : 'encoder (or lm with dynamic masking)';
    throw new DatasetError(`the data in ${dir} is for the ${manifest.task} task; use --application ${want}`);
  }
  // the model's attention mask reads token id 0 as padding (Input-Token's contract)
  const pad = manifest.vocab.specials.pad;
  if (pad !== 0) throw new DatasetError(`the data in ${dir} pads with token id ${pad}, but the model reads id 0 as padding: put [PAD] on the first line of vocab.txt and run \`pretrain prepare\` again`);
}

/** The batch of records `indices` of a loaded dataset: batchFromRecords with the record's index as its id. */
export function batchOf(data: PreparedDataset, indices: readonly number[], application: Application, seed: number, epoch: number): Batch {
  return batchFromRecords(data.manifest, indices.map((id) => ({ id, record: data.records[id]! })), application, seed, epoch);
}

/**
 * The batch of `records`, padded to its longest record with the vocabulary's pad id
 * (segment 0, no target): MLM with dynamic masking masks here, from (seed, epoch, id) with
 * the record's global id, so every epoch sees new masks and a record is masked the same
 * whichever worker or batch row gets it; static masks come from the file; unilm and lm
 * predict the next token.
 */
export function batchFromRecords(
  manifest: Manifest,
  records: readonly { id: number; record: DatasetRecord }[],
  application: Application,
  seed: number,
  epoch: number,
): Batch {
  const length = records.reduce((n, r) => Math.max(n, r.record.tokenIds.length), 1);
  const batchSize = records.length;
  const { specials, size } = manifest.vocab;
  const tokenIds = new Int32Array(batchSize * length).fill(specials.pad);
  const segmentIds = new Int32Array(batchSize * length);
  let targets: Int32Array = new Int32Array(batchSize * length);
  const special = new Set(Object.values(specials));
  records.forEach(({ id, record: rec }, b) => {
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
      const masked = maskWholeWords(rec.tokenIds, rec.second, seededRandom(seed, epoch, id), { mask: specials.mask, size, specials: special });
      tokenIds.set(masked.tokenIds, at);
      masked.maskIds.forEach((m, i) => (targets[at + i] = m > 0 ? m - 1 : 0));
    }
  });
  if (application !== 'encoder') {
    targets = nextTokenTargets(application, batchSize, length, tokenIds, segmentIds);
    // nextTokenTargets knows padding as id 0 only: never predict the vocabulary's pad, whatever its id
    records.forEach(({ record }, b) => targets.fill(0, b * length + record.tokenIds.length - 1, (b + 1) * length));
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
export function splitByDocument(records: readonly { readonly document: number }[] | Int32Array, heldOutEvery = 20): DatasetSplit {
  // a RecordStore gives the documents alone, one Int32Array for the whole corpus
  const byRecord: ArrayLike<number> & Iterable<number> = records instanceof Int32Array ? records : records.map((r) => r.document);
  const documents = new Set(byRecord);
  let held = new Set([...documents].filter((d) => d % heldOutEvery === heldOutEvery - 1));
  if (held.size === 0 && documents.size >= 2) held = new Set([[...documents].reduce((a, b) => Math.max(a, b))]);
  const train: number[] = [];
  const heldOut: number[] = [];
  for (let i = 0; i < byRecord.length; i++) (held.has(byRecord[i]!) ? heldOut : train).push(i);
  return { train, heldOut, documents: documents.size, heldOutDocuments: held.size };
}

/** The split in words, for a run's data line. */
export function describeSplit(split: DatasetSplit): string {
  const docs = (n: number) => `${n} document${n === 1 ? '' : 's'}`;
  if (split.heldOut.length === 0) return `${split.train.length} training records from ${docs(split.documents)}, none held out (evaluation uses training records)`;
  return `${split.train.length} training / ${split.heldOut.length} held-out records (${docs(split.heldOutDocuments)} of ${split.documents} held out)`;
}

