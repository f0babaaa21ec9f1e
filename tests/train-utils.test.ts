import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../src/backend/index.js';
import { clipByGlobalNorm, flattenTensors, unflattenTensors } from '../src/train/gradients.js';

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
  it('auto picks native tensorflow when tfjs-node is installed, else wasm, and says which', async () => {
    const installed = (name: string) => import(name).then(() => true, () => false);
    const nativeInstalled = (await installed('@tensorflow/tfjs-node-gpu')) || (await installed('@tensorflow/tfjs-node'));
    const chosen = await selectBackend('auto');
    assert.equal(chosen.name, nativeInstalled ? 'tensorflow' : 'wasm');
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
});
