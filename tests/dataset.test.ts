import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { batchFromRecords, batchOf, type DatasetRecord, describeSplit, loadDataset, type PreparedDataset, splitByDocument } from '../src/data/dataset.js';
import { encodeExample, int64Feature } from '../src/data/example.js';
import { type Manifest, prepare, type PrepareOptions } from '../src/data/prepare.js';
import { prepareProgress } from '../src/data/progress.js';
import { frameRecord } from '../src/data/tfrecord.js';
import { Vocab } from '../src/data/vocab.js';
import { prepareOptions, SAMPLE_VOCAB, writeSampleSlice } from './helpers.js';

const VOCAB = SAMPLE_VOCAB;
let dir: string;
let small: string;
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'dataset-'));
  // 60 documents: three held out, and records per copy that are not a multiple of 20
  small = await writeSampleSlice(dir, 60);
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const options = (out: string, extra: Partial<PrepareOptions> = {}): PrepareOptions => prepareOptions(small, path.join(dir, out), { ...extra });

/** The text a static record was made from: masked positions carry the original id + 1. */
const original = (r: DatasetRecord) => Array.from(r.tokenIds, (t, i) => (r.second[i]! > 0 ? r.second[i]! - 1 : t)).join(' ');

describe('held-out data', () => {
  it('is chosen by source document: with static masking copies no held-out text is among the training records, at any max length', async () => {
    for (const maxLength of [77, 100, 200]) {
      const o = options(`static-${maxLength}`, { masking: 'static', copies: 2, maxLength });
      await prepare(o);
      const data = await loadDataset(o.out);
      const split = splitByDocument(data.records);
      assert.equal(split.documents, 60);
      assert.equal(split.heldOutDocuments, 3, 'documents 19, 39 and 59');
      assert.ok(split.heldOut.every((i) => data.records[i]!.document % 20 === 19));
      assert.equal(split.train.length + split.heldOut.length, data.records.length);
      // the position-based split this replaces leaked exactly when a copy's records were not a multiple of 20
      assert.notEqual((data.records.length / 2) % 20, 0, `max length ${maxLength}: a case the record-position split got wrong`);
      const training = new Set(split.train.map((i) => original(data.records[i]!)));
      const leaked = split.heldOut.filter((i) => training.has(original(data.records[i]!)));
      assert.deepEqual(leaked, [], `max length ${maxLength}: held-out texts also in training`);
      const heldTexts = split.heldOut.map((i) => original(data.records[i]!));
      assert.equal(new Set(heldTexts).size * 2, heldTexts.length, 'both copies of each held-out text are held out');
    }
  });

  it('with fewer than 20 documents holds out the last one; with one document, none (and says so)', () => {
    const records = (docs: number[]) => docs.map((document) => ({ document }));
    const few = splitByDocument(records([0, 0, 1, 2, 2, 0, 1, 2]));
    assert.deepEqual(few, { train: [0, 1, 2, 5, 6], heldOut: [3, 4, 7], documents: 3, heldOutDocuments: 1 });
    assert.equal(describeSplit(few), '5 training / 3 held-out records (1 document of 3 held out)');
    const one = splitByDocument(records([4, 4, 4]));
    assert.deepEqual(one, { train: [0, 1, 2], heldOut: [], documents: 1, heldOutDocuments: 0 });
    assert.match(describeSplit(one), /3 training records from 1 document, none held out/);
    const many = splitByDocument(records([...Array(45).keys()]));
    assert.deepEqual(many.heldOut, [19, 39]);
  });
});

describe('loadDataset and batches', () => {
  it('stores sequences unpadded: a seq2seq shard is a fraction of the padded size', async () => {
    const pairs = path.join(dir, 'pairs.tsv');
    const text = (await readFile(small, 'utf8')).split('\n').filter((l) => l.length > 8);
    await writeFile(pairs, text.map((l) => `${l.slice(0, 4)}\t${l.slice(4)}`).join('\n') + '\n');
    const manifest = await prepare(options('s2s-512', { task: 'seq2seq', corpus: [pairs], maxLength: 512 }));
    const data = await loadDataset(path.join(dir, 's2s-512'));
    // the same records padded to --max-length, as format 1 stored them
    const pad = (ids: Int32Array, value: number) => [...ids, ...new Array<number>(512 - ids.length).fill(value)];
    const padded = data.records.reduce(
      (n, r) => n + frameRecord(encodeExample({ token_ids: int64Feature(pad(r.tokenIds, 0)), segment_ids: int64Feature(pad(r.second, 0)), document: int64Feature([r.document]) })).length,
      0,
    );
    const bytes = manifest.shards.reduce((n, s) => n + s.bytes, 0);
    assert.ok(bytes * 5 < padded, `${bytes} bytes on disk, ${padded} padded`);
  });

  it('pads each batch to its longest record with the pad id, segment 0 and no target', async () => {
    const vocab = await Vocab.load(VOCAB);
    for (const [name, extra, application] of [
      ['b-dynamic', {}, 'encoder'],
      ['b-static', { masking: 'static' }, 'encoder'],
      ['b-lm', {}, 'lm'],
      ['b-s2s', { task: 'seq2seq' }, 'unilm'],
    ] as const) {
      await prepare(options(name, { ...extra, maxLength: 48 }));
      const data = await loadDataset(path.join(dir, name));
      const lengths = data.records.map((r) => r.tokenIds.length);
      const shortest = lengths.indexOf(Math.min(...lengths));
      const longest = lengths.indexOf(Math.max(...lengths));
      assert.ok(lengths[shortest]! < lengths[longest]!, `${name}: records of different lengths`);
      const indices = [shortest, longest, shortest];
      const batch = batchOf(data, indices, application, 3, 0);
      assert.equal(batch.length, lengths[longest], `${name}: padded to the longest record, not to the max length`);
      assert.ok(batch.length <= 48);
      indices.forEach((r, b) => {
        const rec = data.records[r]!;
        const row = (a: Int32Array) => Array.from(a.subarray(b * batch.length, (b + 1) * batch.length));
        const tail = (a: Int32Array) => row(a).slice(rec.tokenIds.length);
        assert.ok(tail(batch.tokenIds).every((t) => t === vocab.pad), `${name}: pad id in the padding`);
        assert.ok(tail(batch.segmentIds).every((s) => s === 0), `${name}: segment 0 in the padding`);
        assert.ok(tail(batch.targets).every((t) => t === 0), `${name}: no target in the padding`);
        if (application !== 'encoder') assert.equal(row(batch.targets)[rec.tokenIds.length - 1], 0, `${name}: the last token predicts nothing`);
        if (name === 'b-s2s') assert.deepEqual(row(batch.segmentIds).slice(0, rec.tokenIds.length), Array.from(rec.second));
        if (name !== 'b-dynamic') assert.deepEqual(row(batch.tokenIds).slice(0, rec.tokenIds.length), Array.from(rec.tokenIds));
      });
      assert.ok(batch.targets.some((t) => t !== 0), `${name}: targets`);
    }
  });

  it('batchOf is batchFromRecords with the record index as id; masks follow the id, not the batch row', async () => {
    const data = await loadDataset(path.join(dir, 'b-dynamic'));
    const ids = [4, 0, 9];
    const withIds = (order: number[]) => order.map((id) => ({ id, record: data.records[id]! }));
    const batch = batchFromRecords(data.manifest, withIds(ids), 'encoder', 3, 2);
    assert.deepEqual(batchOf(data, ids, 'encoder', 3, 2), batch);
    // the same records in another order: each row moves with its record, masks and all
    const swapped = batchFromRecords(data.manifest, withIds([9, 4, 0]), 'encoder', 3, 2);
    const row = (a: Int32Array, b: number) => Array.from(a.subarray(b * batch.length, (b + 1) * batch.length));
    for (const [from, to] of [[0, 1], [1, 2], [2, 0]] as const) {
      assert.deepEqual(row(swapped.tokenIds, to), row(batch.tokenIds, from));
      assert.deepEqual(row(swapped.targets, to), row(batch.targets, from));
    }
    // a record sent under another id (another position in the corpus) is masked differently
    const relabelled = batchFromRecords(data.manifest, ids.map((id) => ({ id: id + 1000, record: data.records[id]! })), 'encoder', 3, 2);
    assert.notDeepEqual(relabelled.targets, batch.targets);
  });

  it('never predicts padding when the pad id is not 0', () => {
    const data: PreparedDataset = {
      dir: 'memory',
      manifest: { maxLength: 8, task: 'mlm', masking: { mode: 'dynamic' }, vocab: { size: 20, specials: { pad: 7, unk: 1, cls: 2, sep: 3, mask: 4 } } } as Manifest,
      records: [
        { tokenIds: Int32Array.of(2, 10, 11, 3), second: Int32Array.of(0, 1, 2, 0), document: 0 },
        { tokenIds: Int32Array.of(2, 12, 13, 14, 15, 3), second: Int32Array.of(0, 1, 2, 3, 4, 0), document: 1 },
      ],
    };
    const batch = batchOf(data, [0, 1], 'lm', 1, 0);
    assert.deepEqual(Array.from(batch.tokenIds), [2, 10, 11, 3, 7, 7, 2, 12, 13, 14, 15, 3]);
    assert.deepEqual(Array.from(batch.targets), [10, 11, 3, 0, 0, 0, 12, 13, 14, 15, 3, 0]);
  });

  it('refuses data of format 1 with what to do, and records that break the format', async () => {
    await prepare(options('old', { maxLength: 32 }));
    const manifestFile = path.join(dir, 'old', 'manifest.json');
    const manifest = JSON.parse(await readFile(manifestFile, 'utf8')) as Manifest;
    await writeFile(manifestFile, JSON.stringify({ ...manifest, format: 'tfjs-pretrain-data/1' }));
    await assert.rejects(loadDataset(path.join(dir, 'old')), (err: Error) => {
      assert.match(err.message, /has data format tfjs-pretrain-data\/1, this version reads tfjs-pretrain-data\/2: run `pretrain prepare` again/);
      assert.doesNotMatch(err.message, /\n/);
      return true;
    });

    const bad = async (name: string, example: Uint8Array, expected: RegExp) => {
      const out = path.join(dir, name);
      await prepare(options(name, { maxLength: 32, corpus: [small] }));
      const shard = frameRecord(example);
      await writeFile(path.join(out, 'shard-00000.tfrecord'), shard);
      await writeFile(path.join(out, 'manifest.json'), JSON.stringify({ ...manifest, shards: [{ file: 'shard-00000.tfrecord', records: 1, bytes: shard.length, sha256: '' }] }));
      await assert.rejects(loadDataset(out), expected);
    };
    await bad('unequal', encodeExample({ token_ids: int64Feature([2, 10, 3]), word_ids: int64Feature([0, 1]), document: int64Feature([0]) }), /record 0 does not have int64 token_ids and word_ids of one length from 1 to 32/);
    await bad('too-long', encodeExample({ token_ids: int64Feature(new Array(33).fill(5)), word_ids: int64Feature(new Array(33).fill(1)), document: int64Feature([0]) }), /of one length from 1 to 32/);
    await bad('no-document', encodeExample({ token_ids: int64Feature([2, 3]), word_ids: int64Feature([0, 0]) }), /record 0 does not have one non-negative int64 document index/);
  });
});

describe('prepare progress', () => {
  it('starts the bar with the corpus size, never 0/0 MB', async () => {
    const stream = Object.assign(new PassThrough(), { isTTY: true, columns: 120 });
    let written = '';
    stream.on('data', (d: Buffer) => (written += d.toString()));
    const progress = prepareProgress(stream);
    const sizes: number[] = [];
    await prepare(options('progress', { onProgress: (read, total, n) => (sizes.push(total), progress.onProgress(read, total, n)) })).finally(() => progress.stop());
    const corpusMB = Math.round((await readFile(small)).length / 1e4) / 100;
    assert.ok(sizes.length >= 2 && sizes.every((t) => t === sizes[0]), 'one total, from the first report on');
    assert.match(written, new RegExp(`prepare \\[.*\\] 0% \\| 0/${corpusMB} MB`), 'the first render shows the real total');
    assert.doesNotMatch(written, /\| 0\/0 MB/);
  });
});
