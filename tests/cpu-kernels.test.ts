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

  it('allocates only its output, whatever the number of segments (the stock kernel makes tensors per segment)', () => {
    const x = tf.ones([3, 8]);
    const ids = tf.tensor1d([5, 1999, 5], 'int32');
    const backend = tf.backend() as unknown as { makeTensorInfo: (...args: unknown[]) => unknown };
    const allocationsFor = (segments: number): number => {
      const original = backend.makeTensorInfo;
      let calls = 0;
      backend.makeTensorInfo = (...args: unknown[]) => {
        calls++;
        return original.apply(backend, args);
      };
      try {
        tf.unsortedSegmentSum(x, ids, segments).dispose();
      } finally {
        backend.makeTensorInfo = original;
      }
      return calls;
    };
    uninstallCpuKernelFixes();
    const stock = allocationsFor(2000);
    installCpuKernelFixes();
    assert.equal(allocationsFor(2000), 1);
    assert.equal(allocationsFor(20), 1);
    assert.ok(stock >= 2000, `the stock kernel made only ${stock} tensors for 2000 segments: is it still the slow one?`);
    const values = tf.unsortedSegmentSum(x, ids, 2000).dataSync();
    assert.equal(values[5 * 8], 2);
    assert.equal(values[1999 * 8 + 7], 1);
  });
});
