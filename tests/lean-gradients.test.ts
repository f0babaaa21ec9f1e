import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../src/backend/index.js';
import { addSameShape, customOp } from '../src/model/layers/ops.js';
import { leanGradients } from '../src/train/lean-gradients.js';

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
