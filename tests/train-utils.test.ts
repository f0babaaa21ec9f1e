import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../src/backend/index.js';
import { buildTransformer, disposeTransformer } from '../src/model/build.js';
import { clipByGlobalNorm, flattenTensors, unflattenTensors } from '../src/train/gradients.js';
import { PretrainingObjective } from '../src/train/step.js';
import { mlmBatch, tinyConfig } from './helpers.js';

describe('gradient utilities', () => {
  before(async () => {
    await selectBackend('cpu');
  });

  it('clips by the global norm (closed form) and leaves small gradients alone', () => {
    const grads = [tf.tensor1d([3, 0]), tf.tensor2d([[0, 4]], [1, 2])]; // global norm 5
    const clipped = clipByGlobalNorm(grads, 1);
    assert.ok(Math.abs(clipped.norm - 5) < 1e-6);
    assert.deepEqual(Array.from(clipped.grads[0]!.dataSync()).map((v) => Number(v.toFixed(6))), [0.6, 0]);
    assert.deepEqual(Array.from(clipped.grads[1]!.dataSync()).map((v) => Number(v.toFixed(6))), [0, 0.8]);
    const untouched = clipByGlobalNorm(grads, 10);
    assert.deepEqual(Array.from(untouched.grads[0]!.dataSync()), [3, 0]);
  });

  it('flattens tensors into one buffer in order and splits it back', () => {
    const tensors = [tf.tensor1d([1, 2]), tf.tensor2d([[3, 4, 5], [6, 7, 8]]), tf.scalar(9)];
    const flat = flattenTensors(tensors);
    assert.deepEqual(Array.from(flat), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const back = unflattenTensors(flat, tensors.map((t) => t.shape));
    back.forEach((t, i) => {
      assert.deepEqual(t.shape, tensors[i]!.shape);
      assert.deepEqual(t.dataSync(), tensors[i]!.dataSync());
    });
    assert.throws(() => unflattenTensors(flat, [[2], [3]]), /flat buffer has 9 values, the shapes need 5/);
  });
});

describe('backends', () => {
  it('auto picks a working backend and says which', async () => {
    const chosen = await selectBackend('auto');
    assert.ok(['tensorflow', 'wasm', 'cpu'].includes(chosen.name));
    assert.equal(tf.getBackend(), chosen.name);
    assert.match(chosen.description, new RegExp(`^${chosen.name}`));
  });

  it('an unknown backend is a clear error', async () => {
    await assert.rejects(selectBackend('gpu' as never), /unknown backend "gpu"; use one of auto, tensorflow, wasm, cpu/);
  });

  it('tensorflow without tfjs-node installed says what to install', async (t) => {
    let installed = true;
    try {
      await import('@tensorflow/tfjs-node' as string);
    } catch {
      installed = false;
    }
    if (installed) return t.skip('tfjs-node is installed here');
    await assert.rejects(selectBackend('tensorflow'), /needs @tensorflow\/tfjs-node-gpu or @tensorflow\/tfjs-node .*--backend wasm/);
  });

  it('a training step on wasm equals the same step on cpu (loss, accuracy, every gradient)', async () => {
    const config = tinyConfig({ hidden_dropout_prob: 0.1, attention_probs_dropout_prob: 0.1 });
    const batch = mlmBatch(17, 3, 12, 40);
    const run = async (backend: 'cpu' | 'wasm', recompute: boolean) => {
      await selectBackend(backend);
      const model = buildTransformer(config, { seed: 3, application: 'unilm' });
      const objective = new PretrainingObjective(model);
      const r = objective.compute(batch, { dropoutSeed: 9, recompute });
      const grads = r.grads.map((g) => g.dataSync().slice());
      tf.dispose(r.grads);
      disposeTransformer(model);
      return { loss: r.loss, accuracy: r.accuracy, grads };
    };
    const cpu = await run('cpu', false);
    for (const recompute of [false, true]) {
      const wasm = await run('wasm', recompute);
      assert.ok(Math.abs(cpu.loss - wasm.loss) < 1e-4, `loss ${cpu.loss} vs ${wasm.loss}`);
      assert.equal(cpu.accuracy, wasm.accuracy);
      cpu.grads.forEach((g, i) => {
        let worst = 0;
        let scale = 0;
        g.forEach((v, j) => {
          worst = Math.max(worst, Math.abs(v - wasm.grads[i]![j]!));
          scale = Math.max(scale, Math.abs(v));
        });
        assert.ok(worst <= 1e-4 * Math.max(1, scale), `gradient ${i}: max difference ${worst} (scale ${scale})`);
      });
    }
  });
});
