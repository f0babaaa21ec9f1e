import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../src/backend/index.js';
import { readTensorCopy } from '../src/backend/variable-storage.js';
import { createOptimizer, VariableParameters } from '../src/optim/index.js';

for (const backend of ['cpu', 'wasm'] as const) {
  describe(`variable reads and writes on ${backend}`, () => {
    it('a write is seen by the next matmul (wasm caches packed weights per tensor), never by tensors that shared the old storage', async () => {
      await selectBackend(backend);
      const initial = tf.ones([4, 4]);
      const w = tf.variable(initial);
      initial.dispose();
      const x = tf.ones([2, 4]);
      const before = tf.matMul(x, w); // stock wasm would cache an XNNPACK operator for w here
      const rows = tf.slice(w, [0, 0], [1, 4]);
      const seen = w.dataSync();
      const shared = w.clone();
      new VariableParameters([{ name: 'w', variable: w, shape: [4, 4] }]).write(0, new Float32Array(16).fill(2));
      const after = tf.matMul(x, w);
      assert.deepEqual([...after.dataSync()], new Array(8).fill(8), 'x @ w with the new weights');
      assert.deepEqual([...before.dataSync()], new Array(8).fill(4));
      assert.deepEqual([...rows.dataSync()], [1, 1, 1, 1], 'a slice keeps its values');
      assert.deepEqual([...shared.dataSync()], new Array(16).fill(1), 'a clone keeps its values');
      assert.equal(seen[0], 1, 'an earlier dataSync result keeps its values');
      const copy = readTensorCopy(w);
      copy[0] = 99;
      assert.equal(w.dataSync()[0], 2, 'a read is the caller\u2019s copy');
      tf.dispose([before, after, rows, shared, x, w]);
    });

    it('two variables written through one reused read buffer stay separate', async () => {
      await selectBackend(backend);
      const a = tf.variable(tf.tensor1d([1, 2, 3]));
      const b = tf.variable(tf.tensor1d([10, 20, 30]));
      const params = new VariableParameters([
        { name: 'a', variable: a, shape: [3] },
        { name: 'b', variable: b, shape: [3] },
      ]);
      const opt = createOptimizer({ type: 'sgd', learningRate: 0.1 });
      opt.apply(params, [Float32Array.of(1, 1, 1), Float32Array.of(1, 1, 1)]);
      assert.deepEqual([...a.dataSync()].map((v) => +v.toFixed(5)), [0.9, 1.9, 2.9]);
      assert.deepEqual([...b.dataSync()].map((v) => +v.toFixed(5)), [9.9, 19.9, 29.9]);
      a.dispose();
      b.dispose();
    });
  });
}
