import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../src/backend/index.js';
import { readVariableCopy, writeVariableInPlace } from '../src/backend/variable-storage.js';
import { createOptimizer, VariableParameters } from '../src/optim/index.js';

describe('variable storage on cpu', () => {
  it('never writes in place: slices and dataSync results are views of the same array that no count records', async () => {
    await selectBackend('cpu');
    const initial = tf.tensor2d([1, 2, 3, 4, 5, 6], [2, 3]);
    const v = tf.variable(initial);
    initial.dispose();
    const rows = tf.slice(v, [0, 0], [1, 3]);
    const seen = v.dataSync();
    assert.equal(writeVariableInPlace(v, Float32Array.of(7, 7, 7, 7, 7, 7)), false);
    new VariableParameters([{ name: 'v', variable: v, shape: [2, 3] }]).write(0, Float32Array.of(7, 7, 7, 7, 7, 7));
    assert.deepEqual([...v.dataSync()], [7, 7, 7, 7, 7, 7]);
    assert.deepEqual([...rows.dataSync()], [1, 2, 3], 'the slice keeps its values');
    assert.deepEqual([...seen], [1, 2, 3, 4, 5, 6], 'an earlier dataSync result keeps its values');
    rows.dispose();
    v.dispose();
  });

  it('two variables written through one reused read buffer stay separate', async () => {
    await selectBackend('cpu');
    const a = tf.variable(tf.tensor1d([1, 2, 3]));
    const b = tf.variable(tf.tensor1d([10, 20, 30]));
    const params = new VariableParameters([
      { name: 'a', variable: a, shape: [3] },
      { name: 'b', variable: b, shape: [3] },
    ]);
    const opt = createOptimizer({ type: 'sgd', learningRate: 0.1 });
    opt.apply(params, [Float32Array.of(1, 1, 1), Float32Array.of(1, 1, 1)]);
    assert.deepEqual([...a.dataSync()].map((x) => +x.toFixed(5)), [0.9, 1.9, 2.9]);
    assert.deepEqual([...b.dataSync()].map((x) => +x.toFixed(5)), [9.9, 19.9, 29.9]);
    a.dispose();
    b.dispose();
  });
});

describe('variable storage on wasm', () => {
    it('writes in place when the variable owns its storage, and never into a tensor that shares it', async () => {
      await selectBackend('wasm');
      const initial = tf.tensor1d([1, 2, 3]);
      const v = tf.variable(initial);
      assert.equal(writeVariableInPlace(v, Float32Array.of(4, 5, 6)), false, 'the initial tensor still shares the storage');
      initial.dispose();
      const dataId = v.dataId;
      assert.equal(writeVariableInPlace(v, Float32Array.of(4, 5, 6)), true);
      assert.equal(v.dataId, dataId, 'same storage');
      assert.deepEqual([...v.dataSync()], [4, 5, 6]);

      const copy = readVariableCopy(v);
      copy[0] = 99;
      assert.deepEqual([...v.dataSync()], [4, 5, 6], 'the copy is the caller’s');

      const shared = v.clone(); // shares the storage: refCount 2
      assert.equal(writeVariableInPlace(v, Float32Array.of(7, 8, 9)), false);
      const params = new VariableParameters([{ name: 'v', variable: v, shape: [3] }]);
      params.write(0, Float32Array.of(7, 8, 9));
      assert.deepEqual([...v.dataSync()], [7, 8, 9]);
      assert.deepEqual([...shared.dataSync()], [4, 5, 6], 'the sharing tensor keeps its values');
      assert.equal(writeVariableInPlace(v, Float32Array.of(1)), false, 'wrong length');
      shared.dispose();
      v.dispose();
    });
});
