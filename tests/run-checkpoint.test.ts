import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { checkpointName, loadLatestCheckpoint, loadRunCheckpoint, type RunCheckpointContent, saveRunCheckpoint, type SkippedCheckpoint } from '../src/checkpoint/run-checkpoint.js';
import { OPTIMIZER_STATE_FORMAT } from '../src/optim/optimizer.js';
import { DataLedger } from '../src/run/ledger.js';
import { lcg } from './helpers.js';

let root: string;
before(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'run-checkpoint-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

let runs = 0;
async function runDir(): Promise<string> {
  return mkdtemp(path.join(root, `run-${runs++}-`));
}

function values(seed: number, n: number): Float32Array {
  const rand = lcg(seed);
  const out = Float32Array.from({ length: n }, () => rand() - 0.5);
  // values a lossy writer would change: subnormal, negative zero, extremes
  out[0] = 1e-40;
  out[1] = -0;
  out[2] = 3.4028234663852886e38;
  return out;
}

function content(step: number): RunCheckpointContent {
  const ledger = new DataLedger({ recordIds: Array.from({ length: 50 }, (_, i) => i), seed: 1, globalBatch: 4 });
  for (let s = 0; s < step; s++) {
    ledger.next(s);
    ledger.commit(s);
  }
  return {
    state: { step, generation: 2, ledger: ledger.state(), rng: { seed: 1 }, config: { globalBatch: 4, optimizer: { type: 'adafactor' } } },
    params: [
      { name: 'Embedding-Token/embeddings', shape: [10, 4], data: values(step, 40) },
      { name: 'Transformer-0-FeedForward/bias', shape: [4], data: values(step + 100, 4) },
    ],
    optimizer: {
      format: OPTIMIZER_STATE_FORMAT,
      components: ['adafactor'],
      iterations: step,
      microSteps: 0,
      slots: [{ name: 'Embedding-Token/embeddings#adafactor/vr', shape: [10], data: values(step + 200, 10) }],
    },
  };
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

describe('run checkpoints', () => {
  it('round-trip bit-exact: parameters, optimizer state and run state, with a manifest of checksums', async () => {
    const run = await runDir();
    const saved = await saveRunCheckpoint(run, content(3));
    assert.equal(saved.dir, path.join(run, 'ckpt-00000003'));
    assert.deepEqual((await readdir(saved.dir)).sort(), ['manifest.json', 'optimizer.safetensors', 'params.safetensors', 'state.json']);
    const manifest = JSON.parse(await readFile(path.join(saved.dir, 'manifest.json'), 'utf8')) as { files: Record<string, { bytes: number; sha256: string }> };
    assert.equal(Object.values(manifest.files).reduce((n, f) => n + f.bytes, 0), saved.bytes);
    const loaded = await loadRunCheckpoint(saved.dir);
    const expected = content(3);
    assert.equal(loaded.step, 3);
    assert.deepEqual(loaded.state, expected.state);
    assert.deepEqual(loaded.params.map((p) => [p.name, p.shape]), expected.params.map((p) => [p.name, p.shape]));
    loaded.params.forEach((p, i) => assert.ok(sameBits(p.data, expected.params[i]!.data), p.name));
    assert.deepEqual({ ...loaded.optimizer, slots: [] }, { ...expected.optimizer, slots: [] });
    assert.ok(sameBits(loaded.optimizer.slots[0]!.data, expected.optimizer.slots[0]!.data));
    // the ledger continues from the loaded state
    assert.equal(DataLedger.fromState(loaded.state.ledger, Array.from({ length: 50 }, (_, i) => i)).consumedInEpoch, 12);
  });

  it('keeps the newest K, and replaces a checkpoint of the same step', async () => {
    const run = await runDir();
    for (const step of [1, 2, 3]) assert.deepEqual((await saveRunCheckpoint(run, content(step), { keep: 2 })).removed, step === 3 ? ['ckpt-00000001'] : []);
    assert.deepEqual((await readdir(run)).sort(), ['ckpt-00000002', 'ckpt-00000003']);
    const replaced = content(3);
    replaced.params[1]!.data[3] = 42;
    await saveRunCheckpoint(run, replaced, { keep: 2 });
    assert.equal((await loadRunCheckpoint(path.join(run, 'ckpt-00000003'))).params[1]!.data[3], 42);
    assert.deepEqual((await readdir(run)).sort(), ['ckpt-00000002', 'ckpt-00000003']);
    await assert.rejects(saveRunCheckpoint(run, content(4), { keep: 0 }), /keep must be an integer >= 1/);
    assert.throws(() => checkpointName(1e8), /from 0 to 99999999/);
  });

  it('skips a damaged newest checkpoint, naming it, and loads the one before', async () => {
    for (const damaged of ['params.safetensors', 'optimizer.safetensors', 'state.json']) {
      const run = await runDir();
      await saveRunCheckpoint(run, content(4));
      await saveRunCheckpoint(run, content(8));
      const file = path.join(run, 'ckpt-00000008', damaged);
      const bytes = await readFile(file);
      bytes[bytes.length - 3]! ^= 0x01;
      await writeFile(file, bytes);
      const warnings: SkippedCheckpoint[] = [];
      const latest = await loadLatestCheckpoint(run, { onSkip: (s) => warnings.push(s) });
      assert.equal(latest.checkpoint?.step, 4, damaged);
      assert.equal(warnings.length, 1);
      assert.equal(warnings[0]!.name, 'ckpt-00000008');
      assert.match(warnings[0]!.reason, new RegExp(`${damaged.replace('.', '\\.')} does not match its SHA-256`));
      assert.deepEqual(latest.skipped, warnings);
    }
  });

  it('skips a checkpoint with a missing file or manifest, and says so when none is usable', async () => {
    const run = await runDir();
    await saveRunCheckpoint(run, content(5));
    await rm(path.join(run, 'ckpt-00000005', 'optimizer.safetensors'));
    const latest = await loadLatestCheckpoint(run);
    assert.equal(latest.checkpoint, undefined);
    assert.match(latest.skipped[0]!.reason, /optimizer\.safetensors is missing/);
    assert.ok(latest.checkpoint === undefined && /none of the 1 checkpoints/.test(latest.reason));
    await mkdir(path.join(run, 'ckpt-00000009'));
    assert.match((await loadLatestCheckpoint(run)).skipped[0]!.reason, /manifest\.json is missing/);
    const empty = await loadLatestCheckpoint(path.join(root, 'never-created'));
    assert.ok(empty.checkpoint === undefined && /no checkpoint under/.test(empty.reason));
  });

  it('ignores and removes the temporary folder of a write cut short by a crash', async () => {
    const run = await runDir();
    await saveRunCheckpoint(run, content(2));
    // what a crash before the rename leaves: a complete-looking temporary folder of a newer step
    const saved = await saveRunCheckpoint(await runDir(), content(6));
    const temp = path.join(run, `.tmp-ckpt-00000006-99999-abcd1234`);
    await mkdir(temp);
    for (const f of await readdir(saved.dir)) await writeFile(path.join(temp, f), await readFile(path.join(saved.dir, f)));
    await mkdir(path.join(run, '.trash-ckpt-00000001-0000'));
    const warnings: SkippedCheckpoint[] = [];
    const latest = await loadLatestCheckpoint(run, { onSkip: (s) => warnings.push(s) });
    assert.equal(latest.checkpoint?.step, 2);
    assert.deepEqual(warnings, []);
    assert.deepEqual(await readdir(run), ['ckpt-00000002']);
  });
});
