import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, truncate, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TfCheckpoint, TfCheckpointError } from '../src/checkpoint/tf-checkpoint.js';
import { bits16Tensor, DT, float32Tensor, int32Tensor, int64Tensor, stringTensor, type TensorToWrite, writeTfCheckpoint, type WrittenCheckpoint } from './fixtures/tf-checkpoint-writer.js';
import { lcg, PRETRAIN_CLI, runScript } from './helpers.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'tf-checkpoint-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function randomValues(seed: number, n: number): Float32Array {
  const next = lcg(seed);
  return Float32Array.from({ length: n }, () => next() * 2 - 1);
}

const HIDDEN = 8;
const LAYER = 'bert/encoder/layer_0/attention/self/query';

/** A tiny BERT-like checkpoint: weights, Adam slots, global_step (int64), across two shards. */
function bertLike(): { tensors: TensorToWrite[]; expected: Map<string, { dtype: string; shape: number[]; values: Float32Array | Int32Array }> } {
  const expected = new Map<string, { dtype: string; shape: number[]; values: Float32Array | Int32Array }>();
  const tensors: TensorToWrite[] = [];
  const f32 = (name: string, shape: number[], seed: number, shard = 0): void => {
    const values = randomValues(seed, shape.reduce((a, b) => a * b, 1));
    tensors.push(float32Tensor(name, shape, values, shard));
    expected.set(name, { dtype: 'float32', shape, values });
  };
  let seed = 1;
  for (const base of ['bert/embeddings/word_embeddings', `${LAYER}/kernel`, `${LAYER}/bias`, 'bert/embeddings/LayerNorm/gamma', 'bert/embeddings/LayerNorm/beta']) {
    const shape = base.endsWith('word_embeddings') ? [30, HIDDEN] : base.endsWith('kernel') ? [HIDDEN, HIDDEN] : [HIDDEN];
    f32(base, shape, seed++);
    f32(`${base}/adam_m`, shape, seed++, 1);
    f32(`${base}/adam_v`, shape, seed++, 1);
  }
  f32('bert/pooler/dense/scalar', [], seed++);
  f32('bert/empty', [0, HIDDEN], seed++);
  tensors.push(int64Tensor('global_step', [], [123456n]));
  expected.set('global_step', { dtype: 'int64', shape: [], values: Int32Array.of(123456) });
  tensors.push(int64Tensor('cls/step_history', [3], [-5n, 0n, 2147483647n]));
  expected.set('cls/step_history', { dtype: 'int64', shape: [3], values: Int32Array.of(-5, 0, 2147483647) });
  tensors.push(int32Tensor('bert/token_type_ids', [2, 2], [0, 1, -7, 1 << 30]));
  expected.set('bert/token_type_ids', { dtype: 'int32', shape: [2, 2], values: Int32Array.of(0, 1, -7, 1 << 30) });
  // float16: 1, -2, 0.5, 65504 (max), 2^-24 (smallest subnormal); bfloat16: 1, -3.5
  tensors.push(bits16Tensor('bert/half', DT.float16, [5], [0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001]));
  expected.set('bert/half', { dtype: 'float16', shape: [5], values: Float32Array.of(1, -2, 0.5, 65504, 2 ** -24) });
  tensors.push(bits16Tensor('bert/brain', DT.bfloat16, [2], [0x3f80, 0xc060]));
  expected.set('bert/brain', { dtype: 'bfloat16', shape: [2], values: Float32Array.of(1, -3.5) });
  tensors.push(stringTensor('bert/vocab_names', ['[CLS]', '[SEP]']));
  return { tensors, expected };
}

async function writeBertLike(name: string, options: Parameters<typeof writeTfCheckpoint>[2] = {}): Promise<WrittenCheckpoint & { prefix: string }> {
  const folder = path.join(dir, name);
  await mkdir(folder, { recursive: true });
  const prefix = path.join(folder, 'bert_model.ckpt');
  const written = await writeTfCheckpoint(prefix, bertLike().tensors, { blockSize: 200, restartInterval: 4, numShards: 2, snappy: (i) => i % 2 === 1, compressIndex: true, ...options });
  return { ...written, prefix };
}

async function rejects(promise: Promise<unknown>, pattern: RegExp, problem: string): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof TfCheckpointError, `expected a TfCheckpointError, got ${String(err)}`);
    assert.match(err.message, pattern);
    assert.equal(err.problem, problem, err.message);
    return true;
  });
}

describe('TfCheckpoint', () => {
  it('reads back every variable of an independently written checkpoint exactly (several data blocks, Snappy blocks, two shards)', async () => {
    const written = await writeBertLike('roundtrip');
    assert.ok(written.dataBlocks >= 4, `only ${written.dataBlocks} data blocks`);
    assert.ok(written.snappyBlocks >= 2, `only ${written.snappyBlocks} Snappy blocks`);
    const { expected } = bertLike();
    const ckpt = await TfCheckpoint.open(written.prefix);
    try {
      const names = [...expected.keys(), 'bert/vocab_names'].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
      assert.deepEqual(ckpt.variables.map((v) => v.name), names);
      assert.ok(!ckpt.variables.some((v) => v.name === ''), 'the header entry is not a variable');
      assert.deepEqual(ckpt.variables.find((v) => v.name === 'bert/vocab_names'), { name: 'bert/vocab_names', dtype: 'string', shape: [2] });
      for (const [name, e] of expected) {
        const info = ckpt.variables.find((v) => v.name === name)!;
        assert.deepEqual({ dtype: info.dtype, shape: info.shape }, { dtype: e.dtype, shape: e.shape }, name);
        const values = await ckpt.read(name);
        assert.equal(values.constructor, e.values.constructor, name);
        assert.deepEqual(values, e.values, name);
      }
      await rejects(ckpt.read('bert/vocab_names'), /variable bert\/vocab_names .*has dtype string; only float32, float16, bfloat16, int32, int64 are read/, 'unsupported');
      await rejects(ckpt.read('bert/nothing'), /has no variable bert\/nothing/, 'missing');
    } finally {
      await ckpt.close();
    }
  });

  it('reads all-plain and all-Snappy tables, large blocks and the default restart interval alike', async () => {
    const { expected } = bertLike();
    for (const [name, options] of [
      ['plain', { snappy: () => false, compressIndex: false }],
      ['all-snappy', { snappy: () => true }],
      ['one-block', { blockSize: 1 << 20, restartInterval: 16, numShards: 1 }],
    ] as const) {
      const folder = path.join(dir, name);
      await mkdir(folder, { recursive: true });
      const tensors = bertLike().tensors.map((t) => ({ ...t, shard: options.numShards === 1 ? 0 : (t.shard ?? 0) }));
      await writeTfCheckpoint(path.join(folder, 'model.ckpt-7'), tensors, { blockSize: 200, restartInterval: 4, numShards: 2, ...options });
      const ckpt = await TfCheckpoint.open(folder);
      assert.equal(ckpt.variables.length, expected.size + 1, name);
      assert.deepEqual(await ckpt.read(`${LAYER}/kernel`), expected.get(`${LAYER}/kernel`)!.values, name);
      assert.deepEqual(await ckpt.read('global_step'), Int32Array.of(123456), name);
      await ckpt.close();
    }
  });

  it('opens a prefix, its .index file, or a folder (one checkpoint, or several with the checkpoint file)', async () => {
    const written = await writeBertLike('paths');
    for (const where of [written.prefix, written.indexFile, path.dirname(written.prefix)]) {
      const ckpt = await TfCheckpoint.open(where);
      assert.equal(ckpt.variables.length, bertLike().tensors.length, where);
      await ckpt.close();
    }
    const folder = path.join(dir, 'several');
    await mkdir(folder);
    await writeTfCheckpoint(path.join(folder, 'model.ckpt-100'), [float32Tensor('a', [1], [1])]);
    await writeTfCheckpoint(path.join(folder, 'model.ckpt-200'), [float32Tensor('a', [1], [2])]);
    await rejects(TfCheckpoint.open(folder), /holds 2 checkpoints \(.*model\.ckpt-100, .*model\.ckpt-200\)/, 'missing');
    await writeFile(path.join(folder, 'checkpoint'), 'model_checkpoint_path: "model.ckpt-200"\nall_model_checkpoint_paths: "model.ckpt-100"\nall_model_checkpoint_paths: "model.ckpt-200"\n');
    const latest = await TfCheckpoint.open(folder);
    assert.deepEqual(await latest.read('a'), Float32Array.of(2));
    await latest.close();
    await writeFile(path.join(folder, 'checkpoint'), 'model_checkpoint_path: "/trained/elsewhere/model.ckpt-100"\n');
    const moved = await TfCheckpoint.open(folder);
    assert.deepEqual(await moved.read('a'), Float32Array.of(1));
    await moved.close();
    await rejects(TfCheckpoint.open(path.join(dir, 'nowhere', 'x.ckpt')), /no TensorFlow checkpoint at .*nowhere\/x\.ckpt: .*nowhere\/x\.ckpt\.index does not exist/, 'missing');
    await rejects(TfCheckpoint.open(path.join(dir, 'empty-folder-that-is-missing')), /does not exist/, 'missing');
    await mkdir(path.join(dir, 'empty'));
    await rejects(TfCheckpoint.open(path.join(dir, 'empty')), /holds no TensorFlow checkpoint/, 'missing');
  });

  it('names the variable and the data file whose CRC32C does not match; the other variables still read', async () => {
    const written = await writeBertLike('bad-crc');
    const name = `${LAYER}/kernel`;
    const at = written.placed.get(name)!;
    const bytes = await readFile(at.file);
    bytes[at.offset + 5] ^= 0x40;
    await writeFile(at.file, bytes);
    const ckpt = await TfCheckpoint.open(written.prefix);
    await rejects(ckpt.read(name), new RegExp(`checksum mismatch for variable ${name} in .*bert_model\\.ckpt\\.data-00000-of-00002 \\(bytes ${at.offset} to ${at.offset + at.size}\\)`), 'damaged');
    assert.deepEqual(await ckpt.read(`${LAYER}/bias`), bertLike().expected.get(`${LAYER}/bias`)!.values);
    await ckpt.close();
  });

  it('names a damaged index block, a truncated index (footer magic) and a truncated or missing data shard', async () => {
    const written = await writeBertLike('damaged');
    const original = await readFile(written.indexFile);
    // a flipped byte in data block 2 (Snappy or not, its CRC covers the stored bytes)
    const block = written.blocks[2]!;
    const flipped = Buffer.from(original);
    flipped[block.offset + 1] ^= 0x01;
    await writeFile(written.indexFile, flipped);
    await rejects(TfCheckpoint.open(written.prefix), new RegExp(`bert_model\\.ckpt\\.index is not a valid TensorFlow checkpoint index: checksum mismatch in the data block 2 at byte ${block.offset}`), 'damaged');
    await writeFile(written.indexFile, original.subarray(0, original.length - 3));
    await rejects(TfCheckpoint.open(written.prefix), /bert_model\.ckpt\.index is not a valid TensorFlow checkpoint index: bad footer magic/, 'damaged');
    await writeFile(written.indexFile, original);

    const at = written.placed.get('bert/embeddings/word_embeddings/adam_v')!;
    await truncate(at.file, at.offset + 10);
    const ckpt = await TfCheckpoint.open(written.prefix);
    await rejects(ckpt.read('bert/embeddings/word_embeddings/adam_v'), /data-00001-of-00002 ends at byte \d+ but variable bert\/embeddings\/word_embeddings\/adam_v needs bytes \d+ to \d+ \(truncated\?\)/, 'damaged');
    await ckpt.close();
    await unlink(written.dataFiles[1]!);
    await rejects(TfCheckpoint.open(written.prefix), /data shard .*bert_model\.ckpt\.data-00001-of-00002 of checkpoint .*bert_model\.ckpt is missing/, 'missing');
  });

  it('refuses int64 values outside int32 and a big-endian checkpoint, naming them', async () => {
    const folder = path.join(dir, 'refused');
    await mkdir(folder);
    await writeTfCheckpoint(path.join(folder, 'big'), [int64Tensor('global_step', [], [1n << 40n]), float32Tensor('w', [2], [1, 2])]);
    const ckpt = await TfCheckpoint.open(path.join(folder, 'big'));
    assert.deepEqual(ckpt.variables, [{ name: 'global_step', dtype: 'int64', shape: [] }, { name: 'w', dtype: 'float32', shape: [2] }]);
    await rejects(ckpt.read('global_step'), /variable global_step \(int64\) has value 1099511627776 at index 0, outside the int32 range/, 'unsupported');
    assert.deepEqual(await ckpt.read('w'), Float32Array.of(1, 2));
    await ckpt.close();
    await writeTfCheckpoint(path.join(folder, 'be'), [float32Tensor('w', [1], [1])], { endianness: 1 });
    await rejects(TfCheckpoint.open(path.join(folder, 'be')), /written big-endian/, 'unsupported');
  });

  it('a BERT-base-sized index of many variables reads fast and in order', async () => {
    const tensors: TensorToWrite[] = [];
    for (let layer = 0; layer < 12; layer++) {
      for (const part of ['attention/self/query', 'attention/self/key', 'attention/self/value', 'attention/output/dense', 'intermediate/dense', 'output/dense']) {
        for (const w of ['kernel', 'bias']) {
          for (const slot of ['', '/adam_m', '/adam_v']) tensors.push(float32Tensor(`bert/encoder/layer_${layer}/${part}/${w}${slot}`, [2], [layer, 1]));
        }
      }
    }
    const written = await writeTfCheckpoint(path.join(dir, 'many'), tensors, { blockSize: 512, snappy: () => true });
    assert.ok(written.dataBlocks > 10);
    const ckpt = await TfCheckpoint.open(path.join(dir, 'many'));
    assert.equal(ckpt.variables.length, tensors.length);
    const names = ckpt.variables.map((v) => v.name);
    assert.deepEqual(names, [...names].sort());
    assert.deepEqual(await ckpt.read('bert/encoder/layer_11/output/dense/bias/adam_v'), Float32Array.of(11, 1));
    await ckpt.close();
  });
});

describe('pretrain checkpoint inspect', () => {
  it('lists every variable as a JSON line, with --values the first numbers, unreadable dtypes said in the line', async () => {
    const written = await writeBertLike('cli');
    const listed = await runScript(PRETRAIN_CLI, ['checkpoint', 'inspect', path.dirname(written.prefix)]);
    assert.equal(listed.code, 0, listed.stderr);
    const lines = listed.stdout.trim().split('\n').map((l) => JSON.parse(l) as { name: string; dtype: string; shape: number[]; values?: unknown });
    assert.equal(lines.length, bertLike().tensors.length);
    assert.deepEqual(lines.find((l) => l.name === 'global_step'), { name: 'global_step', dtype: 'int64', shape: [] });
    assert.deepEqual(lines.find((l) => l.name === `${LAYER}/kernel`), { name: `${LAYER}/kernel`, dtype: 'float32', shape: [HIDDEN, HIDDEN] });

    const withValues = await runScript(PRETRAIN_CLI, ['checkpoint', 'inspect', written.prefix, '--values', '3']);
    assert.equal(withValues.code, 0, withValues.stderr);
    const byName = new Map(withValues.stdout.trim().split('\n').map((l) => JSON.parse(l) as { name: string; values: number[] | null; unreadable?: string }).map((l) => [l.name, l]));
    const kernel = bertLike().expected.get(`${LAYER}/kernel`)!.values;
    assert.deepEqual(byName.get(`${LAYER}/kernel`)!.values!.map((v) => Math.fround(v)), Array.from(kernel.subarray(0, 3)));
    assert.deepEqual(byName.get('global_step')!.values, [123456]);
    assert.deepEqual(byName.get('bert/half')!.values, [1, -2, 0.5]);
    assert.deepEqual(byName.get('bert/empty')!.values, []);
    assert.equal(byName.get('bert/vocab_names')!.values, null);
    assert.match(byName.get('bert/vocab_names')!.unreadable!, /has dtype string/);
  });

  it('exits 2 for a missing path, 1 for a damaged checkpoint, with one line on stderr', async () => {
    const missing = await runScript(PRETRAIN_CLI, ['checkpoint', 'inspect', path.join(dir, 'no', 'such.ckpt')]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /^pretrain: error: no TensorFlow checkpoint at .*no\/such\.ckpt: .*such\.ckpt\.index does not exist$/m);
    assert.equal(missing.stderr.trim().split('\n').length, 1);

    const written = await writeBertLike('cli-damaged');
    const at = written.placed.get('bert/embeddings/word_embeddings')!;
    const bytes = await readFile(at.file);
    bytes[at.offset] ^= 0xff;
    await writeFile(at.file, bytes);
    const listing = await runScript(PRETRAIN_CLI, ['checkpoint', 'inspect', written.prefix]);
    assert.equal(listing.code, 0, 'listing reads no tensor data');
    const damaged = await runScript(PRETRAIN_CLI, ['checkpoint', 'inspect', written.prefix, '--values', '1']);
    assert.equal(damaged.code, 1);
    assert.match(damaged.stderr, /^pretrain: error: checksum mismatch for variable bert\/embeddings\/word_embeddings in .*data-00000-of-00002/);
    assert.equal(damaged.stderr.trim().split('\n').length, 1);

    const index = await readFile(written.indexFile);
    await writeFile(written.indexFile, index.subarray(0, 20));
    const truncated = await runScript(PRETRAIN_CLI, ['checkpoint', 'inspect', written.prefix]);
    assert.equal(truncated.code, 1);
    assert.match(truncated.stderr, /^pretrain: error: .*bert_model\.ckpt\.index is not a valid TensorFlow checkpoint index: bad footer magic/);
  });
});
