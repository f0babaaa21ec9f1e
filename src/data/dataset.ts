import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Application } from '../model/build.js';
import { type Batch, nextTokenTargets } from '../train/targets.js';
import { decodeExample } from './example.js';
import { maskWholeWords, seededRandom } from './masking.js';
import { DATA_FORMAT, type Manifest, MANIFEST_FILE } from './prepare.js';
import { readRecords } from './tfrecord.js';

export class DatasetError extends Error {
  override name = 'DatasetError';
}

/** One record: its token ids and its second feature (word_ids, mask_ids or segment_ids, by the manifest). */
export interface DatasetRecord {
  readonly tokenIds: Int32Array;
  readonly second: Int32Array;
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
  if (manifest.format !== DATA_FORMAT) throw new DatasetError(`${file} has format ${String(manifest.format)}, expected ${DATA_FORMAT}`);
  const names = Object.keys(manifest.features);
  const secondName = names.find((n) => n !== 'token_ids');
  if (!names.includes('token_ids') || !secondName) throw new DatasetError(`${file} lists features ${names.join(', ')}; expected token_ids and one more`);
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
      if (tokens?.kind !== 'int64' || second?.kind !== 'int64' || tokens.values.length !== manifest.maxLength || second.values.length !== manifest.maxLength) {
        throw new DatasetError(`${shardFile} record ${r.index} does not have int64 token_ids and ${secondName} of length ${manifest.maxLength}`);
      }
      records.push({ tokenIds: Int32Array.from(tokens.values, Number), second: Int32Array.from(second.values, Number) });
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
 * The batch of records `indices`: MLM with dynamic masking masks here, from
 * (seed, epoch, record), so every epoch sees new masks; static masks come from the file;
 * unilm and lm predict the next token.
 */
export function batchOf(data: PreparedDataset, indices: readonly number[], application: Application, seed: number, epoch: number): Batch {
  const { manifest } = data;
  const length = manifest.maxLength;
  const batchSize = indices.length;
  const tokenIds = new Int32Array(batchSize * length);
  const segmentIds = new Int32Array(batchSize * length);
  let targets: Int32Array = new Int32Array(batchSize * length);
  const { specials, size } = manifest.vocab;
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
  if (application !== 'encoder') targets = nextTokenTargets(application, batchSize, length, tokenIds, segmentIds);
  return { batchSize, length, tokenIds, segmentIds, targets };
}

/** Every `heldOutEvery`-th record is held out for evaluation; the rest train. */
export function splitRecords(count: number, heldOutEvery = 20): { train: number[]; heldOut: number[] } {
  const train: number[] = [];
  const heldOut: number[] = [];
  for (let i = 0; i < count; i++) (i % heldOutEvery === heldOutEvery - 1 ? heldOut : train).push(i);
  return { train, heldOut };
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
