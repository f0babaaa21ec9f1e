import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { bytesFeature, decodeExample, encodeExample, exampleToJson, floatFeature, int64Feature } from '../src/data/example.js';
import { frameRecord, maskCrc, maskedCrc32c, readRecords, TFRecordError, TFRecordIndex, TFRecordWriter } from '../src/data/tfrecord.js';
import { lcg, PRETRAIN_CLI, runScript } from './helpers.js';


/** CRC32C bit by bit (reflected Castagnoli polynomial 0x82F63B78): independent of the library. */
function crc32cBitwise(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const b of bytes) {
    crc ^= b;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'tfrecord-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const runCli = (args: string[]) => runScript(PRETRAIN_CLI, args);

async function writeShard(name: string, records: Uint8Array[]) {
  const file = path.join(dir, name);
  const writer = await TFRecordWriter.create(file);
  for (const r of records) await writer.write(r);
  return { file, summary: await writer.close() };
}

async function collect(file: string): Promise<{ records: Uint8Array[]; error?: TFRecordError }> {
  const records: Uint8Array[] = [];
  try {
    for await (const r of readRecords(file)) records.push(r.data);
  } catch (err) {
    if (err instanceof TFRecordError) return { records, error: err };
    throw err;
  }
  return { records };
}

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

function examples(n: number, seed: number): Uint8Array[] {
  const rand = lcg(seed);
  return Array.from({ length: n }, (_, i) =>
    encodeExample({
      token_ids: int64Feature(Array.from({ length: 1 + Math.floor(rand() * 200) }, () => Math.floor(rand() * 21128))),
      weights: floatFeature([rand(), -1.5, i]),
      text: bytesFeature([`record ${i}`]),
    }),
  );
}

describe('CRC32C and the TFRecord framing', () => {
  it('matches the CRC-32C check value and a bitwise implementation; masks as TensorFlow does', () => {
    const check = new TextEncoder().encode('123456789');
    assert.equal(crc32cBitwise(check), 0xe3069283, 'the standard CRC-32C check value');
    const c = 0xe3069283;
    assert.equal(maskedCrc32c(check), ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) % 2 ** 32);
    assert.equal(maskCrc(0), 0xa282ead8);
    const rand = lcg(1);
    for (let n = 0; n < 40; n++) {
      const bytes = Uint8Array.from({ length: n * 7 }, () => Math.floor(rand() * 256));
      assert.equal(maskedCrc32c(bytes), maskCrc(crc32cBitwise(bytes)));
    }
  });

  it('frames a known record byte for byte', () => {
    const framed = frameRecord(new TextEncoder().encode('abc'));
    const length = Buffer.from([3, 0, 0, 0, 0, 0, 0, 0]);
    const expected = Buffer.alloc(12 + 3 + 4);
    length.copy(expected, 0);
    expected.writeUInt32LE(maskCrc(crc32cBitwise(length)), 8);
    expected.write('abc', 12, 'latin1');
    expected.writeUInt32LE(maskCrc(crc32cBitwise(new TextEncoder().encode('abc'))), 15);
    assert.deepEqual(framed, expected);
    // CRC-32C("abc") = 0x364B3FB7, so the data CRC is its mask
    assert.equal(crc32cBitwise(new TextEncoder().encode('abc')), 0x364b3fb7);
  });

  it('encodes tf.train.Example exactly as the protobuf wire format says, and decodes it back', () => {
    const bytes = encodeExample({ a: int64Feature([1, 300]) });
    assert.deepEqual([...bytes], [0x0a, 0x0e, 0x0a, 0x0c, 0x0a, 0x01, 0x61, 0x12, 0x07, 0x1a, 0x05, 0x0a, 0x03, 0x01, 0xac, 0x02]);
    const big = 2n ** 62n + 1n;
    const back = decodeExample(encodeExample({ b: bytesFeature(['x', Uint8Array.of(0, 255)]), f: floatFeature([0.5, -2]), i: int64Feature([-1, 0, big]) }));
    assert.deepEqual(back.i, { kind: 'int64', values: [-1, 0, big] });
    assert.deepEqual(back.f, { kind: 'float', values: [0.5, -2] });
    assert.deepEqual(back.b!.values.map((v) => [...(v as Uint8Array)]), [[0x78], [0, 255]]);
    assert.equal(exampleToJson(back), `{"b":{"bytes":["eA==","AP8="]},"f":{"float":[0.5,-2]},"i":{"int64":[-1,0,${big}]}}`);
  });
});

describe('TFRecord files', () => {
  it('round-trip records (one larger than the read chunk), with a manifest summary that matches the file', async () => {
    const records = [...examples(50, 2), new Uint8Array(3 << 20).fill(7), new Uint8Array(0), ...examples(5, 3)];
    const { file, summary } = await writeShard('round.tfrecord', records);
    const bytes = await readFile(file);
    assert.equal(summary.records, records.length);
    assert.equal(summary.bytes, bytes.length);
    assert.equal(summary.sha256, createHash('sha256').update(bytes).digest('hex'));
    const { records: back, error } = await collect(file);
    assert.equal(error, undefined);
    assert.deepEqual(back.map(hex), records.map(hex));
    assert.deepEqual((await readdir(dir)).filter((f) => f.includes('.tmp')), [], 'no temporary left');
  });

  it('random access by record number through an index built once and reused', async () => {
    const records = examples(30, 4);
    const { file } = await writeShard('indexed.tfrecord', records);
    const index = await TFRecordIndex.open(file);
    assert.equal(index.count, 30);
    assert.ok(existsSync(`${file}.index`));
    for (const i of [0, 17, 29]) assert.equal(hex(await index.read(i)), hex(records[i]!));
    await assert.rejects(index.read(30), /has 30 records; there is no record 30/);
    const again = await TFRecordIndex.open(file);
    assert.deepEqual(again.offsets, index.offsets);
    // a shard that changed size gets a fresh index
    const { file: same } = await writeShard('indexed.tfrecord', records.slice(0, 10));
    assert.equal((await TFRecordIndex.open(same)).count, 10);
  });

  it('stops at a corrupt record with the file and its byte offset, after yielding only the good records', async () => {
    const records = examples(10, 5);
    const { file } = await writeShard('corrupt.tfrecord', records);
    const bytes = await readFile(file);
    const offsetOf = (i: number) => records.slice(0, i).reduce((n, r) => n + r.length + 16, 0);

    const dataFlip = Buffer.from(bytes);
    dataFlip[offsetOf(5) + 12 + 3] ^= 0x40;
    await writeFile(file, dataFlip);
    let got = await collect(file);
    assert.equal(got.records.length, 5);
    assert.equal(got.error!.offset, offsetOf(5));
    assert.match(got.error!.message, new RegExp(`corrupt\\.tfrecord: corrupt record data \\(data CRC mismatch\\) at byte ${offsetOf(5)}$`));

    const lengthFlip = Buffer.from(bytes);
    lengthFlip[offsetOf(2)] ^= 0x01;
    await writeFile(file, lengthFlip);
    got = await collect(file);
    assert.equal(got.records.length, 2);
    assert.match(got.error!.message, /corrupt record header \(length CRC mismatch\) at byte/);

    await writeFile(file, bytes);
    await truncate(file, offsetOf(7) + 20);
    got = await collect(file);
    assert.equal(got.records.length, 7);
    assert.match(got.error!.message, new RegExp(`truncated record \\(${records[7]!.length} data bytes declared, 8 of ${records[7]!.length + 4} present\\) at byte ${offsetOf(7)}`));

    await truncate(file, offsetOf(7) + 5);
    got = await collect(file);
    assert.match(got.error!.message, /truncated record header \(5 of 12 bytes\)/);
    await assert.rejects(TFRecordIndex.open(file), TFRecordError);
  });

  it('a writer that is aborted or never closed leaves no file under the final name', async () => {
    const file = path.join(dir, 'aborted.tfrecord');
    const writer = await TFRecordWriter.create(file);
    await writer.write(new Uint8Array(10));
    assert.equal(existsSync(file), false, 'nothing under the final name before close');
    await writer.abort();
    assert.equal(existsSync(file), false);
    assert.deepEqual((await readdir(dir)).filter((f) => f.includes('aborted')), []);
  });
});

describe('pretrain inspect', () => {
  it('--help describes the JSON it prints: features by name, and the wrapper with --offsets or several files', async () => {
    const { file } = await writeShard('help.tfrecord', [encodeExample({ token_ids: int64Feature([2, 3]), w: floatFeature([0.5]) })]);
    const help = (await runCli(['inspect', '--help'])).stdout.replace(/\s+/g, ' ');
    const plain = JSON.parse((await runCli(['inspect', file])).stdout) as Record<string, unknown>;
    // the help's shape: {"<feature name>": {"int64"|"float"|"bytes": [values]}, ...}
    assert.match(help, /\{"<feature name>": \{"int64"\|"float"\|"bytes": \[values\]\}, \.\.\.\}/);
    assert.deepEqual(plain, { token_ids: { int64: [2, 3] }, w: { float: [0.5] } });
    const wrapperKeys = [...help.matchAll(/with --offsets or several files: \{([^{]*)/g)].flatMap((m) => [...m[1]!.matchAll(/"(\w+)"/g)].map((k) => k[1]));
    const wrapped = JSON.parse((await runCli(['inspect', file, '--offsets'])).stdout.split('\n')[0]!) as Record<string, unknown>;
    const several = JSON.parse((await runCli(['inspect', file, file])).stdout.split('\n')[0]!) as Record<string, unknown>;
    assert.deepEqual(wrapperKeys, Object.keys(wrapped));
    assert.deepEqual(Object.keys(several), Object.keys(wrapped));
  });

  it('prints each record as one JSON line, from any record with --start, and names a corrupt file and offset (exit 1)', async () => {
    const records = [encodeExample({ token_ids: int64Feature([2, 5, 3]), mask_ids: int64Feature([0, 9, 0]) }), encodeExample({ x: floatFeature([0.25]) }), encodeExample({ s: bytesFeature(['hi']) })];
    const { file } = await writeShard('inspect.tfrecord', records);
    const all = await runCli(['inspect', file]);
    assert.equal(all.code, 0, all.stderr);
    assert.deepEqual(all.stdout.trim().split('\n').map((l) => JSON.parse(l)), [
      { mask_ids: { int64: [0, 9, 0] }, token_ids: { int64: [2, 5, 3] } },
      { x: { float: [0.25] } },
      { s: { bytes: ['aGk='] } },
    ]);
    const one = await runCli(['inspect', file, '--start', '2', '--limit', '1', '--offsets']);
    assert.equal(one.code, 0, one.stderr);
    assert.deepEqual(JSON.parse(one.stdout), { file, record: 2, offset: records[0]!.length + records[1]!.length + 32, features: { s: { bytes: ['aGk='] } } });
    for (const start of ['3', '10']) {
      const past = await runCli(['inspect', file, '--start', start]);
      assert.equal(past.code, 2, past.stderr);
      assert.match(past.stderr, new RegExp(`--start ${start} is past the end of .*inspect\\.tfrecord: it has 3 record\\(s\\), numbered 0 to 2`));
      assert.equal(past.stdout, '');
    }

    const bytes = await readFile(file);
    bytes[bytes.length - 2] ^= 1;
    await writeFile(file, bytes);
    const bad = await runCli(['inspect', file]);
    assert.equal(bad.code, 1);
    assert.equal(bad.stdout.trim().split('\n').length, 2, 'the good records are printed');
    assert.match(bad.stderr, new RegExp(`inspect\\.tfrecord: corrupt record data \\(data CRC mismatch\\) at byte ${records[0]!.length + records[1]!.length + 32}`));
    assert.doesNotMatch(bad.stderr, /\n\s+at /);

    // the user's mistakes, not corrupt data: exit 2, saying what is wrong
    const folder = await runCli(['inspect', dir]);
    assert.equal(folder.code, 2);
    assert.match(folder.stderr, /tfrecord-\w+ is a directory; give TFRecord files/);
    const missing = await runCli(['inspect', path.join(dir, 'nope.tfrecord')]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /nope\.tfrecord does not exist/);
    assert.doesNotMatch(missing.stderr, /at byte/);
    const notExample = path.join(dir, 'not-example.tfrecord');
    await writeFile(notExample, frameRecord(Uint8Array.of(0xff, 0xff, 0xff)));
    const garbage = await runCli(['inspect', notExample]);
    assert.equal(garbage.code, 1);
    assert.match(garbage.stderr, /record 0 is not a tf\.train\.Example/);
  });
});
