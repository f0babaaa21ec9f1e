import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../src/backend/index.js';
import { activation, LayerNorm } from '../src/model/layers/index.js';
import { expNonPositive } from '../src/model/layers/activations.js';
import { sparseSoftmaxCrossEntropy } from '../src/train/loss.js';
import { lcg } from './helpers.js';

/** erf by its Maclaurin series (|z| < 3) or continued fraction: a reference independent of tfjs. */
function erfReference(z: number): number {
  const a = Math.abs(z);
  let value: number;
  if (a < 3) {
    let sum = 0;
    let term = a;
    for (let n = 0; n < 120; n++) {
      sum += term / (2 * n + 1);
      term *= (-a * a) / (n + 1);
    }
    value = (2 / Math.sqrt(Math.PI)) * sum;
  } else {
    let f = 0;
    for (let n = 60; n >= 1; n--) f = n / 2 / (a + f);
    value = 1 - Math.exp(-a * a) / Math.sqrt(Math.PI) / (a + f);
  }
  return Math.sign(z) * value;
}

function values(n: number, seed: number, scale: number): Float32Array {
  const rand = lcg(seed);
  return Float32Array.from({ length: n }, () => (rand() - 0.5) * 2 * scale);
}

for (const backend of ['cpu', 'wasm'] as const) {
  describe(`numerics on ${backend}`, () => {
    before(async () => {
      await selectBackend(backend);
    });

    it('GELU equals x*Phi(x) with the exact erf, and its gradient Phi(x) + x*phi(x)', () => {
      const xs = Float32Array.from([...values(2000, 1, 6), 0, -0, 1e-20, -1e-20, 12, -12, 40, -40]);
      const x = tf.tensor1d(xs);
      const gelu = activation('gelu');
      const y = gelu(x).dataSync();
      const dy = tf.grad((t: tf.Tensor) => tf.sum(gelu(t)))(x).dataSync();
      for (let i = 0; i < xs.length; i++) {
        const v = xs[i]!;
        const cdf = 0.5 * (1 + erfReference(v / Math.SQRT2));
        const pdf = Math.exp(-0.5 * v * v) / Math.sqrt(2 * Math.PI);
        assert.ok(Math.abs(y[i]! - v * cdf) <= 1e-6 * Math.max(1, Math.abs(v)), `gelu(${v}) = ${y[i]} vs ${v * cdf}`);
        assert.ok(Math.abs(dy[i]! - (cdf + v * pdf)) <= 1e-6, `gelu'(${v}) = ${dy[i]} vs ${cdf + v * pdf}`);
      }
    });

    it('exp of non-positive values through sigmoid is exp to float32 precision', () => {
      const ys = Float32Array.from([...values(1000, 2, 40).map((v) => -Math.abs(v)), 0, -87, -104, -1e-8]);
      const got = expNonPositive(tf.tensor1d(ys)).dataSync();
      ys.forEach((v, i) => {
        const want = Math.exp(v);
        assert.ok(Math.abs(got[i]! - want) <= 1e-6 * want + 1e-37, `exp(${v}) = ${got[i]} vs ${want}`);
      });
    });

    it('sparse softmax cross-entropy: value, gradient and accuracy against closed forms', () => {
      const rows = 5;
      const vocab = 7;
      const logitValues = values(rows * vocab, 3, 4);
      const labels = [0, 6, 3, 3, 1];
      const logits = tf.tensor2d(logitValues, [rows, vocab]);
      const labelTensor = tf.tensor1d(labels, 'int32');
      const { lossSum, correct } = sparseSoftmaxCrossEntropy(logits, labelTensor);
      const grad = tf.grad((l: tf.Tensor) => sparseSoftmaxCrossEntropy(l, labelTensor).lossSum)(logits).dataSync();
      let expectedLoss = 0;
      let expectedCorrect = 0;
      for (let r = 0; r < rows; r++) {
        const row = Array.from(logitValues.subarray(r * vocab, (r + 1) * vocab));
        const max = Math.max(...row);
        const z = row.reduce((s, v) => s + Math.exp(v - max), 0);
        expectedLoss += Math.log(z) + max - row[labels[r]!]!;
        if (row.indexOf(max) === labels[r]) expectedCorrect++;
        row.forEach((v, c) => {
          const want = Math.exp(v - max) / z - (c === labels[r] ? 1 : 0);
          assert.ok(Math.abs(grad[r * vocab + c]! - want) < 1e-6);
        });
      }
      assert.ok(Math.abs(lossSum.dataSync()[0]! - expectedLoss) < 1e-4);
      assert.equal(correct.dataSync()[0], expectedCorrect);
    });

    it('LayerNorm: normalises the last axis and its custom gradient matches autodiff of the formula', () => {
      const x = tf.tensor3d(values(2 * 3 * 8, 4, 3), [2, 3, 8]);
      const layer = new LayerNorm({ name: `ln-${backend}` });
      layer.build([2, 3, 8]);
      layer.setWeights([tf.tensor1d(values(8, 5, 1)), tf.tensor1d(values(8, 6, 1))]);
      const [g, b] = layer.getWeights() as [tf.Tensor, tf.Tensor];
      const reference = (t: tf.Tensor, gg: tf.Tensor, bb: tf.Tensor): tf.Tensor => {
        const { mean, variance } = tf.moments(t, -1, true);
        return tf.add(tf.mul(tf.div(tf.sub(t, mean), tf.sqrt(tf.add(variance, 1e-12))), gg), bb);
      };
      const weightsOut = tf.tensor3d(values(2 * 3 * 8, 7, 1), [2, 3, 8]);
      const objective = (t: tf.Tensor): tf.Scalar => tf.sum(tf.mul(layer.call(t) as tf.Tensor, weightsOut));
      // the layer reads its own variables: their gradients come from variableGrads
      const { grads } = tf.variableGrads(() => objective(x));
      const dx = tf.grad(objective)(x);
      const [rdx, rdg, rdb] = tf.grads((t: tf.Tensor, gg: tf.Tensor, bb: tf.Tensor) => tf.sum(tf.mul(reference(t, gg, bb), weightsOut)))([x, g, b]);
      const close = (a: tf.Tensor, e: tf.Tensor): void => {
        const av = a.dataSync();
        const ev = e.dataSync();
        ev.forEach((v, i) => assert.ok(Math.abs(av[i]! - v) < 2e-4, `${av[i]} vs ${v}`));
      };
      close(layer.call(x) as tf.Tensor, reference(x, g, b));
      close(dx, rdx!);
      const named = Object.entries(grads);
      close(named.find(([k]) => k.includes('gamma'))![1], rdg!);
      close(named.find(([k]) => k.includes('beta'))![1], rdb!);
    });
  });
}
