import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { batchFromRecords, batchOf, DatasetError, loadDataset, type PreparedDataset, splitByDocument } from '../src/data/dataset.js';
import { type Manifest, prepare } from '../src/data/prepare.js';
import { RecordStore } from '../src/data/record-store.js';
import { frameRecord, readRecords, TFRecordError, TFRecordIndex } from '../src/data/tfrecord.js';
import { prepareOptions, writeSampleSlice } from './helpers.js';

let dir: string;
/** A prepared folder of several shards, the last one short; never modified (tests change copies). */
let prepared: string;
let manifest: Manifest;
let data: PreparedDataset;

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'record-store-'));
  const corpus = await writeSampleSlice(dir, 6);
  prepared = path.join(dir, 'prepared');
  manifest = await prepare(prepareOptions(corpus, prepared, { recordsPerShard: 30 }));
  data = await loadDataset(prepared);
  assert.ok(manifest.shards.length >= 3, `several shards (${manifest.shards.length})`);
  assert.notEqual(manifest.records % 30, 0, 'a short last shard');
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

let copies = 0;
/** A copy of the prepared folder without its indexes, to change. */
async function copyOfPrepared(): Promise<string> {
  const out = path.join(dir, `copy-${copies++}`);
  await cp(prepared, out, { recursive: true, filter: (f) => !f.endsWith('.index') });
  return out;
}

const shardFile = (folder: string, i: number) => path.join(folder, manifest.shards[i]!.file);

/** Global id of shard `i`'s first record. */
const firstId = (i: number) => manifest.shards.slice(0, i).reduce((n, s) => n + s.records, 0);

describe('RecordStore', () => {
  it('reads every record by global id across the shards, as loadDataset does, through one file handle per shard', async () => {
    const folder = await copyOfPrepared();
    const progress: [number, number][] = [];
    const store = await RecordStore.open(folder, { onProgress: (done, total) => progress.push([done, total]) });
    try {
      const total = manifest.shards.reduce((n, s) => n + s.bytes, 0);
      assert.deepEqual(progress.at(0), [0, total]);
      assert.deepEqual(progress.at(-1), [total, total]);
      assert.equal(progress.length, manifest.shards.length + 1);
      for (const s of manifest.shards) assert.ok(existsSync(path.join(folder, `${s.file}.index`)), `${s.file}.index saved`);
      assert.equal(store.count, data.records.length);
      assert.equal(store.perTokenFeature, 'word_ids');
      assert.deepEqual(store.manifest, manifest);

      const raw: Uint8Array[] = [];
      for (const s of manifest.shards) for await (const r of readRecords(path.join(folder, s.file))) raw.push(r.data);
      const fds = () => readdir('/proc/self/fd').then((f) => f.length);
      const before = await fds();
      // backwards and concurrently: reads depend on the id alone, not on order
      const ids = [...Array(store.count).keys()].reverse();
      const bytes = await Promise.all(ids.map((id) => store.read(id)));
      ids.forEach((id, k) => assert.deepEqual(bytes[k], raw[id], `record ${id}'s bytes`));
      assert.equal((await fds()) - before, manifest.shards.length, 'one handle per shard, kept open');
      for (const id of ids) assert.deepEqual(await store.decode(id), data.records[id], `record ${id}`);
      assert.equal((await fds()) - before, manifest.shards.length, 'no handle opened per record');
      const some = await store.records([firstId(1) - 1, firstId(1), store.count - 1]);
      assert.deepEqual(some, [firstId(1) - 1, firstId(1), store.count - 1].map((id) => ({ id, record: data.records[id] })));

      await store.close();
      assert.equal((await fds()) - before, 0, 'close closes them');
      await assert.rejects(store.read(0), /record store of .* is closed/);
    } finally {
      await store.close();
    }
  });

  it('gives the batches batchOf gives, masks keyed by the global record id', async () => {
    const store = await RecordStore.open(prepared);
    try {
      assert.equal(manifest.masking?.mode, 'dynamic');
      // records from three shards, in a row order unlike their id order
      const ids = [store.count - 1, firstId(1), 3, firstId(2) + 1];
      for (const epoch of [0, 1]) {
        const fromStore = batchFromRecords(store.manifest, await store.records(ids), 'encoder', 7, epoch);
        assert.deepEqual(fromStore, batchOf(data, ids, 'encoder', 7, epoch), `epoch ${epoch}`);
        assert.ok(fromStore.targets.some((t) => t !== 0), 'some positions masked');
      }
      assert.deepEqual(batchFromRecords(store.manifest, await store.records(ids), 'lm', 7, 0), batchOf(data, ids, 'lm', 7, 0));
    } finally {
      await store.close();
    }
  });

  it('names a shard whose size or record count disagrees with the manifest, or that is missing', async () => {
    const grown = await copyOfPrepared();
    await writeFile(shardFile(grown, 1), Buffer.concat([await readFile(shardFile(grown, 1)), Buffer.from([0])]));
    const bytes = manifest.shards[1]!.bytes;
    await assert.rejects(RecordStore.open(grown), (err: Error) => {
      assert.ok(err instanceof DatasetError);
      assert.equal(err.message, `${shardFile(grown, 1)} has ${bytes + 1} bytes, the manifest says ${bytes}: the data changed after prepare`);
      return true;
    });

    const missing = await copyOfPrepared();
    await rm(shardFile(missing, 2));
    await assert.rejects(RecordStore.open(missing), { name: 'DatasetError', message: `${shardFile(missing, 2)}, listed in the manifest, is missing` });

    const miscounted = await copyOfPrepared();
    const shards = manifest.shards.map((s, i) => (i === 1 ? { ...s, records: s.records + 1 } : s));
    await writeFile(path.join(miscounted, 'manifest.json'), JSON.stringify({ ...manifest, shards }));
    const records = manifest.shards[1]!.records;
    await assert.rejects(RecordStore.open(miscounted), { name: 'DatasetError', message: `${shardFile(miscounted, 1)} has ${records} records, the manifest says ${records + 1}` });
  });

  it('opens data where an index cannot be saved (read-only mounts), keeping that index in memory', async () => {
    const folder = await copyOfPrepared();
    // chmod does not stop root: a folder in the index's place makes saving it fail
    const blocked = `${shardFile(folder, 1)}.index`;
    await mkdir(blocked);
    await assert.rejects(TFRecordIndex.open(shardFile(folder, 1)), /EISDIR/, 'TFRecordIndex alone still fails on a failed save');
    const warnings: string[] = [];
    const store = await RecordStore.open(folder, { onWarning: (w) => warnings.push(w) });
    try {
      assert.deepEqual(warnings, [`${blocked} could not be saved (EISDIR); using it from memory, so the next open scans ${shardFile(folder, 1)} again`]);
      assert.ok((await stat(blocked)).isDirectory());
      assert.ok(existsSync(`${shardFile(folder, 2)}.index`), 'the other indexes are saved');
      for (const id of [firstId(1), firstId(2) - 1, firstId(2)]) assert.deepEqual(await store.decode(id), data.records[id]);
    } finally {
      await store.close();
    }
  });

  it('names a corrupt record by file and byte offset: on read, in documents(), and when indexing', async () => {
    const folder = await copyOfPrepared();
    const file = shardFile(folder, 1);
    const index = await TFRecordIndex.open(file);
    const offset = index.offsets[2]!;
    const bytes = await readFile(file);
    bytes[offset + 12 + 1] ^= 0x40; // past the 12-byte header: the data CRC breaks
    await writeFile(file, bytes);
    const expected = (err: Error) => {
      assert.ok(err instanceof TFRecordError);
      assert.equal(err.message, `${file}: corrupt record data (data CRC mismatch) at byte ${offset}`);
      return true;
    };
    // the saved index matches the size, so the store opens and the read finds it
    const store = await RecordStore.open(folder);
    try {
      await assert.rejects(store.read(firstId(1) + 2), expected);
      await assert.rejects(store.decode(firstId(1) + 2), expected);
      assert.deepEqual(await store.decode(firstId(1) + 3), data.records[firstId(1) + 3], 'its neighbours still read');
      await assert.rejects(store.documents(), expected);
    } finally {
      await store.close();
    }
    await rm(`${file}.index`);
    await assert.rejects(RecordStore.open(folder), expected);
  });

  it('names a record that is not a tf.train.Example by shard, record and id', async () => {
    const folder = await copyOfPrepared();
    const shard = frameRecord(Uint8Array.of(0xff, 0xff, 0xff));
    await writeFile(path.join(folder, 'shard-00000.tfrecord'), shard);
    await writeFile(path.join(folder, 'manifest.json'), JSON.stringify({ ...manifest, shards: [{ file: 'shard-00000.tfrecord', records: 1, bytes: shard.length, sha256: '' }] }));
    const store = await RecordStore.open(folder);
    try {
      await assert.rejects(store.decode(0), (err: Error) => {
        assert.ok(err instanceof DatasetError);
        assert.match(err.message, new RegExp(`^${path.join(folder, 'shard-00000.tfrecord').replace(/[.\\]/g, '\\$&')} record 0 \\(id 0\\) is not a tf\\.train\\.Example: `));
        return true;
      });
    } finally {
      await store.close();
    }
  });

  it('refuses an id out of range with a RangeError naming the count', async () => {
    const store = await RecordStore.open(prepared);
    try {
      const n = store.count;
      for (const id of [n, -1, 1.5, Number.NaN]) {
        await assert.rejects(store.read(id), (err: Error) => {
          assert.ok(err instanceof RangeError);
          assert.equal(err.message, `${prepared} has ${n} records (ids 0 to ${n - 1}); there is no record ${id}`);
          return true;
        });
      }
      await assert.rejects(store.decode(n), RangeError);
      assert.deepEqual(await store.decode(n - 1), data.records[n - 1], 'the last id reads');
    } finally {
      await store.close();
    }
  });

  it('documents() (and scan()) give every record its document and length in one pass, and the split by document is the same', async () => {
    const store = await RecordStore.open(prepared);
    try {
      const documents = await store.documents();
      assert.ok(documents instanceof Int32Array);
      assert.deepEqual(Array.from(documents), data.records.map((r) => r.document));
      assert.equal(new Set(documents).size, 6);
      const split = splitByDocument(documents);
      assert.deepEqual(split, splitByDocument(data.records));
      assert.ok(split.heldOut.length > 0 && split.train.length > 0);
      const { lengths } = await store.scan();
      assert.deepEqual(Array.from(lengths), data.records.map((r) => r.tokenIds.length), 'scan() gives each record its token count too');
    } finally {
      await store.close();
    }
  });
});
