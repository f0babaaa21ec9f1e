import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../src/backend/index.js';
import { addSameShape, customOp } from '../src/model/layers/ops.js';
import { leanGradients } from '../src/train/lean-gradients.js';
import { addRowsInPlace } from '../src/backend/variable-storage.js';

describe('leanGradients', () => {
  before(async () => {
    await selectBackend('cpu');
  });

  const a = (): tf.Tensor => tf.tensor2d([[0.5, -1, 2], [3, 0.25, -0.75]]);
  const b = (): tf.Tensor => tf.tensor1d([0.1, 0.2, -0.3]);
  // a graph with broadcasting, a shared input, a custom gradient that hands back dy itself
  // for two inputs, a metric off the path to the loss, and an input with no gradient
  const f = (x: tf.Tensor, y: tf.Tensor, unused: tf.Tensor): tf.Scalar => {
    const h = tf.tanh(tf.add(tf.mul(x, y), y));
    const twice = addSameShape(h, h);
    tf.argMax(twice, -1);
    void unused;
    return tf.sum(tf.mul(twice, tf.sigmoid(x)));
  };

  it('equals tf.grads, including aliased custom gradients, and leaves no tensor behind', () => {
    const [x, y, u] = [a(), b(), tf.scalar(1)];
    const reference = tf.grads((p: tf.Tensor, q: tf.Tensor) => f(p, q, u))([x, y]).map((g) => g.dataSync());
    const expected = tf.tidy(() => f(x, y, u).dataSync()[0]!);
    const before = tf.memory().numTensors;
    const { value, grads } = leanGradients(() => f(x, y, u), [x, y, u]);
    assert.ok(Math.abs(value.dataSync()[0]! - expected) < 1e-6);
    grads.slice(0, 2).forEach((g, i) => {
      const got = g!.dataSync();
      reference[i]!.forEach((v, j) => assert.ok(Math.abs(v - got[j]!) < 1e-6, `grad ${i}[${j}]: ${got[j]} vs ${v}`));
    });
    assert.equal(grads[2], undefined, 'an input the value does not depend on has no gradient');
    tf.dispose([value, ...grads.filter((g): g is tf.Tensor => g !== undefined)]);
    assert.equal(tf.memory().numTensors, before);
  });

  for (const backend of ['cpu', 'wasm'] as const) {
    it(`a gather from a table that has a gradient already (a tied embedding) adds its rows in place: equals tf.grads, no dense gradient of the gather (${backend})`, async () => {
      await selectBackend(backend);
      try {
        const table = tf.variable(tf.tensor2d(Array.from({ length: 6 * 4 }, (_, i) => Math.sin(i)), [6, 4]));
        // ids repeat (5 twice) and skip rows (3)
        const ids = tf.tensor1d([5, 0, 5, 2, 1], 'int32');
        const weights = tf.tensor2d(Array.from({ length: 5 * 4 }, (_, i) => Math.cos(i)), [5, 4]);
        const hidden = tf.tensor2d(Array.from({ length: 3 * 4 }, (_, i) => 0.1 * i - 0.5), [3, 4]);
        // the projection comes after the lookup in the forward pass, so it is differentiated first
        const loss = (t: tf.Tensor): tf.Scalar => tf.tidy(() => {
          const looked = tf.gather(t, ids);
          const logits = tf.matMul(tf.add(hidden, tf.sum(tf.mul(looked, weights), 0)), t, false, true);
          return tf.sum(tf.mul(logits, logits));
        });
        const reference = tf.grad(loss)(table);
        const profile = await tf.profile(() => {
          const { value, grads } = leanGradients(() => loss(table), [table]);
          value.dispose();
          return grads[0]!;
        });
        const names = profile.kernels.map((k) => k.name);
        assert.ok(!names.includes('UnsortedSegmentSum'), `the gather's rows went into the projection's gradient (kernels: ${names.join(', ')})`);
        const { value, grads } = leanGradients(() => loss(table), [table]);
        const got = grads[0]!.dataSync();
        reference.dataSync().forEach((r, i) => assert.ok(Math.abs(r - got[i]!) <= 1e-5 * (1 + Math.abs(r)), `d table[${i}]: ${got[i]} vs ${r}`));
        // a lookup alone (no gradient before it) is differentiated as usual
        const alone = leanGradients(() => tf.sum(tf.mul(tf.gather(table, ids), weights)), [table]);
        const aloneReference = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, ids), weights)))(table);
        assert.deepEqual(alone.grads[0]!.dataSync(), aloneReference.dataSync());
        tf.dispose([table, ids, weights, hidden, reference, value, ...grads, alone.value, ...alone.grads, aloneReference, profile.result as tf.Tensor]);
      } finally {
        await selectBackend('cpu');
      }
    });
  }

  it('rows are added in place only into storage no other tensor shares', () => {
    const target = tf.zeros([3, 2]);
    const alias = tf.reshape(target, [2, 3]);
    assert.equal(addRowsInPlace(target, Int32Array.of(1), Float32Array.of(1, 2)), false, 'a reshape shares the storage');
    assert.deepEqual([...alias.dataSync()], [0, 0, 0, 0, 0, 0]);
    alias.dispose();
    assert.equal(addRowsInPlace(target, Int32Array.of(1, 1), Float32Array.of(1, 2, 10, 20)), true);
    assert.deepEqual([...target.dataSync()], [0, 0, 11, 22, 0, 0]);
    assert.throws(() => addRowsInPlace(target, Int32Array.of(3), Float32Array.of(1, 2)), /row 3 of a table of 3 rows/);
    target.dispose();
  });

  it('seeds with dy and restores an outer tape', () => {
    const [x, y] = [a(), b()];
    const dy = tf.scalar(2.5);
    const engine = tf.engine() as unknown as { state: { activeTape: unknown } };
    const outer = [{ marker: true }];
    engine.state.activeTape = outer;
    const { grads } = leanGradients(() => f(x, y, y), [x], dy);
    assert.equal(engine.state.activeTape, outer);
    engine.state.activeTape = null;
    const plain = leanGradients(() => f(x, y, y), [x]).grads[0]!.dataSync();
    grads[0]!.dataSync().forEach((v, i) => assert.ok(Math.abs(v - 2.5 * plain[i]!) < 1e-5));
    assert.ok(!dy.isDisposed, 'the caller owns dy');
  });

  it('frees saved activations during the backward pass (peak well below keep-everything)', async () => {
    const x = tf.variable(tf.randomNormal([64, 64], 0, 1, 'float32', 1));
    // a deep chain: every level saves a [64,64] tensor
    const chain = (): tf.Scalar => {
      let h: tf.Tensor = x;
      for (let i = 0; i < 40; i++) h = customOp(([t], save) => {
        const out = tf.tanh(t!);
        save([out]);
        return { value: out, gradFunc: (d: tf.Tensor, [o]: tf.Tensor[]) => tf.mul(d, tf.sub(1, tf.square(o!))) };
      })(h);
      return tf.sum(h);
    };
    // tf.profile reuses one result object: read each peak before the next profile
    const leanPeak = (await tf.profile(() => tf.dispose(leanGradients(chain, [x]).grads as tf.Tensor[]))).peakBytes;
    const stockPeak = (await tf.profile(() => {
      const { grads } = tf.variableGrads(chain, [x]);
      tf.dispose(Object.values(grads));
    })).peakBytes;
    assert.ok(leanPeak < stockPeak * 0.75, `lean peak ${leanPeak} vs stock ${stockPeak}`);
  });
});
