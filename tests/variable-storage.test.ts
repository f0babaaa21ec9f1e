import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../src/backend/index.js';
import { readVariableCopy, writeVariableInPlace } from '../src/backend/variable-storage.js';
import { VariableParameters } from '../src/optim/index.js';

for (const backend of ['cpu', 'wasm'] as const) {
  describe(`variable storage on ${backend}`, () => {
    it('writes in place when the variable owns its storage, and never into a tensor that shares it', async () => {
      await selectBackend(backend);
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
}
