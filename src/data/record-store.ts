import { promises as fs } from 'node:fs';
import { checkShardSize, DatasetError, type DatasetRecord, decodeRecord, readManifest, recordCountError } from './dataset.js';
import type { Manifest } from './prepare.js';
import { openForReading, readRecords, TFRecordIndex } from './tfrecord.js';

const INT32_MAX = 0x7fffffff;

export interface RecordStoreOptions {
  /** After each shard's index is ready (loaded, or built by a verifying pass): bytes of the shards done so far, of all. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
  /** A shard's index could not be saved beside it (a read-only mount, for one): the store goes on with it in memory. */
  onWarning?: (message: string) => void;
}

interface Shard {
  readonly file: string;
  readonly index: TFRecordIndex;
  /** Global id of the shard's first record. */
  readonly first: number;
  /** Opened on the first read and kept: reads are positional, so one handle serves concurrent reads. */
  handle?: Promise<fs.FileHandle>;
}

/**
 * A `pretrain prepare` folder read by record id without loading it: ids 0..count-1 run
 * through the shards in manifest order. What it holds grows with the corpus only by one
 * offset per record (the shard indexes); records are read from disk when asked for.
 */
export class RecordStore {
  private closed = false;

  private constructor(
    readonly dir: string,
    readonly manifest: Manifest,
    /** The manifest's per-token feature: word_ids, mask_ids or segment_ids. */
    readonly perTokenFeature: string,
    private readonly shards: readonly Shard[],
    readonly count: number,
  ) {}

  /**
   * Checks the manifest, every shard's size and record count against it, and opens each
   * shard's index (`<shard>.index`, built by one verifying pass and saved on first use).
   */
  static async open(dir: string, options: RecordStoreOptions = {}): Promise<RecordStore> {
    const { manifest, perTokenFeature } = await readManifest(dir);
    const files: string[] = [];
    // every size first: a changed shard is named before minutes go into indexing the others
    for (const shard of manifest.shards) files.push(await checkShardSize(dir, shard));
    const total = manifest.shards.reduce((n, s) => n + s.bytes, 0);
    let done = 0;
    options.onProgress?.(done, total);
    const shards: Shard[] = [];
    let first = 0;
    for (const [i, shard] of manifest.shards.entries()) {
      const file = files[i]!;
      const index = await TFRecordIndex.open(file, {
        // the index only saves a scan: failing to write it must not stop a run
        onSaveError: (err) => options.onWarning?.(`${file}.index could not be saved (${err.code ?? err.message}); using it from memory, so the next open scans ${file} again`),
      });
      if (index.count !== shard.records) throw recordCountError(file, index.count, shard);
      shards.push({ file, index, first });
      first += index.count;
      done += shard.bytes;
      options.onProgress?.(done, total);
    }
    return new RecordStore(dir, manifest, perTokenFeature, shards, first);
  }

  /** The shard holding record `id` and the record's number in it. */
  private locate(id: number): { shard: Shard; local: number } {
    if (this.closed) throw new Error(`the record store of ${this.dir} is closed`);
    if (!Number.isInteger(id) || id < 0 || id >= this.count) {
      throw new RangeError(`${this.dir} has ${this.count} records (ids 0 to ${this.count - 1}); there is no record ${id}`);
    }
    let lo = 0;
    let hi = this.shards.length - 1;
    // the last shard whose first id is <= id
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.shards[mid]!.first <= id) lo = mid;
      else hi = mid - 1;
    }
    const shard = this.shards[lo]!;
    return { shard, local: id - shard.first };
  }

  /** Record `id`'s tf.train.Example bytes, both CRCs verified. */
  async read(id: number): Promise<Uint8Array> {
    const { shard, local } = this.locate(id);
    return this.readAt(shard, local);
  }

  private async readAt(shard: Shard, local: number): Promise<Uint8Array> {
    shard.handle ??= openForReading(shard.file).catch((err: unknown) => {
      shard.handle = undefined; // the next read tries again
      throw err;
    });
    return shard.index.read(local, await shard.handle);
  }

  /** Record `id`, decoded and checked against the manifest. */
  async decode(id: number): Promise<DatasetRecord> {
    const { shard, local } = this.locate(id);
    return decodeRecord(await this.readAt(shard, local), this.manifest, this.perTokenFeature, `${shard.file} record ${local} (id ${id})`);
  }

  /** Records `ids`, decoded, with their ids: what batchFromRecords takes. */
  records(ids: readonly number[]): Promise<{ id: number; record: DatasetRecord }[]> {
    return Promise.all(ids.map(async (id) => ({ id, record: await this.decode(id) })));
  }

  /**
   * Every record's source document and token count, by id, from one sequential pass over
   * the shards: the held-out split goes by document, and the coordinator pads each global
   * batch to its longest record without decoding records again at every step. Every record
   * is verified and decoded on the way.
   */
  async scan(): Promise<{ documents: Int32Array; lengths: Int32Array }> {
    const documents = new Int32Array(this.count);
    const lengths = new Int32Array(this.count);
    for (const shard of this.shards) {
      if (this.closed) throw new Error(`the record store of ${this.dir} is closed`);
      let n = 0;
      for await (const r of readRecords(shard.file)) {
        n++;
        if (r.index >= shard.index.count) continue; // counted, for the error below
        const id = shard.first + r.index;
        const { document, tokenIds } = decodeRecord(r.data, this.manifest, this.perTokenFeature, `${shard.file} record ${r.index} (id ${id})`);
        if (document > INT32_MAX) throw new DatasetError(`${shard.file} record ${r.index} (id ${id}) has document index ${document}, beyond the ${INT32_MAX} this reader supports`);
        documents[id] = document;
        lengths[id] = tokenIds.length;
      }
      if (n !== shard.index.count) throw new DatasetError(`${shard.file} changed while it was read: it had ${shard.index.count} records when the store opened, now ${n}`);
    }
    return { documents, lengths };
  }

  /** Every record's source document, by id (see scan). */
  async documents(): Promise<Int32Array> {
    return (await this.scan()).documents;
  }

  /** Closes the shards' file handles; reads after this throw. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(
      this.shards.map(async (s) => {
        const handle = s.handle;
        s.handle = undefined;
        if (handle) await (await handle.catch(() => undefined))?.close();
      }),
    );
  }
}
