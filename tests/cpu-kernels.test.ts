import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-layers';
import { installCpuKernelFixes, uninstallCpuKernelFixes } from '../src/backend/cpu-kernels.js';
import { lcg } from './helpers.js';

describe('cpu UnsortedSegmentSum', () => {
  it('equals the stock kernel (repeated, out-of-range ids; rank 2 and 3; int32) and the gather gradient', async () => {
    await tf.setBackend('cpu');
    const rand = lcg(5);
    const x = tf.tensor3d(Array.from({ length: 6 * 2 * 3 }, () => rand() - 0.5), [6, 2, 3]);
    const ids = tf.tensor1d([4, 0, 4, 9, -1, 2], 'int32');
    const cases = (): tf.Tensor[] => [
      tf.unsortedSegmentSum(x, ids, 5),
      tf.unsortedSegmentSum(tf.reshape(x, [6, 6]), ids, 5),
      tf.unsortedSegmentSum(tf.cast(tf.mul(x, 100), 'int32'), ids, 5),
      tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, tf.tensor1d([1, 1, 3], 'int32')), tf.tensor2d([[1, 2], [3, 4], [5, 6]]))))(tf.zeros([4, 2])),
    ];
    uninstallCpuKernelFixes();
    const stock = cases().map((t) => Array.from(t.dataSync()));
    installCpuKernelFixes();
    const ours = cases();
    ours.forEach((t, i) => {
      const got = Array.from(t.dataSync());
      assert.equal(got.length, stock[i]!.length);
      got.forEach((v, j) => assert.ok(Math.abs(v - stock[i]![j]!) < 1e-6, `case ${i}[${j}]: ${v} vs ${stock[i]![j]}`));
    });
    assert.equal(ours[2]!.dtype, 'int32');
    assert.deepEqual(Array.from(ours[3]!.dataSync()), [0, 0, 4, 6, 0, 0, 5, 6]);
  });

  it('a 21k-row embedding gradient stays small and fast (the stock kernel materialises a mask per row)', () => {
    installCpuKernelFixes();
    const before = tf.memory().numBytes;
    const grad = tf.grad((t: tf.Tensor) => tf.sum(tf.gather(t, tf.tensor1d([5, 21127, 5], 'int32'))))(tf.zeros([21128, 8]));
    const values = grad.dataSync();
    assert.equal(values[5 * 8], 2);
    assert.equal(values[21127 * 8 + 7], 1);
    grad.dispose();
    assert.ok(tf.memory().numBytes - before < 21128 * 8 * 4 * 2);
  });
});
