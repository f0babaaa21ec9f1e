import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../src/backend/index.js';
import { ReductionBuffer } from '../src/comm/simd-add.js';
import { AdaFactor, Optimizer, type OptimizerWorkspace, VariableParameters } from '../src/optim/index.js';
import { adafactorMatrixKernel, inPlaceMatrixPasses, scratchElementsFor } from '../src/optim/adafactor-kernel.js';
import { lcg } from './helpers.js';

function seeded(rand: () => number, n: number, scale: number): Float32Array {
  return Float32Array.from({ length: n }, () => (rand() - 0.5) * scale);
}

/** `total` floats of a reduction buffer (the memory a worker's gradients lie in), cut into consecutive views. */
function carve(total: number): (n: number) => Float32Array {
  const flat = ReductionBuffer.allocate(total, 1024);
  let at = 0;
  return (n) => flat.subarray(at, (at += n));
}

describe('the optimizer\'s workspace in the gradients\' memory', () => {
  // odd sizes and a start one float past a 16-byte boundary: the lanes' tails and unaligned views
  for (const [rows, cols] of [[300, 259], [257, 301]] as const) {
    it(`AdaFactor's SIMD passes in place equal the copying ones bit for bit ([${rows}, ${cols}])`, () => {
      const n = rows * cols;
      const rand = lcg(rows);
      const g0 = seeded(rand, n, 0.02);
      const value0 = seeded(rand, n, 1);
      const lo0 = Float32Array.from({ length: cols }, () => rand() * 1e-4);
      const hi0 = Float32Array.from({ length: rows }, () => rand() * 1e-4);
      const next = carve(1 + 3 * n + scratchElementsFor(rows, cols) + 1);
      next(1);
      const [g, value, u, scratch] = [next(n), next(n), next(n), next(scratchElementsFor(rows, cols))];
      g.set(g0);
      value.set(value0);
      const inPlace = inPlaceMatrixPasses(g, value, u, scratch, rows, cols, 1e-30);
      assert.ok(inPlace, 'views of one reduction buffer should run in place');
      const copied = adafactorMatrixKernel()!.load(g0, value0, rows, cols, 1e-30)!;
      assert.deepEqual([...inPlace.colSums], [...copied.colSums]);
      assert.deepEqual([...inPlace.rowSums], [...copied.rowSums]);
      const expected = new Float32Array(n);
      const a = inPlace.update(lo0, hi0, 1.5, u);
      const b = copied.update(lo0, hi0, 1.5, expected);
      assert.equal(a.squares, b.squares);
      assert.equal(a.valueSquares, b.valueSquares);
      a.finish(0.01);
      b.finish(0.01);
      assert.deepEqual(u, expected, 'value - 0.01 u');
      assert.deepEqual(g, g0, 'the gradient is read, not written');
      assert.deepEqual(value, value0, 'the values are read, not written');
    });
  }

  it('runs no passes in place where the views do not share a registered memory or the scratch is too small', () => {
    const [rows, cols] = [256, 256];
    const n = rows * cols;
    const next = carve(3 * n + scratchElementsFor(rows, cols));
    const [g, value, u] = [next(n), next(n), next(n)];
    assert.equal(inPlaceMatrixPasses(g, value, u, new Float32Array(scratchElementsFor(rows, cols)), rows, cols, 1e-30), undefined, 'scratch elsewhere');
    assert.equal(inPlaceMatrixPasses(g, new Float32Array(n), u, next(scratchElementsFor(rows, cols)), rows, cols, 1e-30), undefined, 'values elsewhere');
    const small = carve(3 * n + 8);
    assert.equal(inPlaceMatrixPasses(small(n), small(n), small(n), small(8), rows, cols, 1e-30), undefined, 'scratch too small');
  });

  for (const beta1 of [0, 0.9]) {
    it(`AdaFactor (beta1 ${beta1}) through a workspace updates tfjs variables to the same bits as without one, over 3 steps`, async () => {
      await selectBackend('cpu');
      // a large matrix (SIMD passes), a small factored one and a vector (JavaScript passes)
      const shapes = [[300, 259], [130, 200], [37]];
      const rand = lcg(7 + beta1);
      const initial = shapes.map((s) => seeded(rand, s.reduce((a, b) => a * b, 1), 1));
      const replica = () => {
        const weights = shapes.map((shape, i) => ({ name: `w${i}`, shape, variable: tf.variable(tf.tensor(initial[i]!, shape)) }));
        return { weights, params: new VariableParameters(weights), optimizer: new Optimizer(new AdaFactor({ beta1, learningRate: 1e-2 })) };
      };
      const plain = replica();
      const spaced = replica();
      const room = spaced.optimizer.workspaceElements(shapes);
      assert.equal(room.value, 300 * 259);
      assert.equal(room.scratch, scratchElementsFor(300, 259));
      const sizes = shapes.map((s) => s.reduce((a, b) => a * b, 1));
      const next = carve(sizes.reduce((a, b) => a + b, 0) + room.value + room.proposed + room.scratch);
      const grads = sizes.map(next);
      const workspace: OptimizerWorkspace = { value: next(room.value), proposed: next(room.proposed), scratch: next(room.scratch) };
      for (let step = 1; step <= 3; step++) {
        sizes.forEach((n, i) => grads[i]!.set(seeded(rand, n, 0.05 * step)));
        plain.optimizer.apply(plain.params, grads.map((g) => g.slice()));
        spaced.optimizer.apply(spaced.params, grads, { workspace });
        shapes.forEach((_, i) => assert.deepEqual(spaced.weights[i]!.variable.dataSync(), plain.weights[i]!.variable.dataSync(), `w${i} after step ${step}`));
      }
      assert.ok(workspace.scratch.some((x) => x !== 0), 'the large matrix\'s statistics went through the scratch: the passes ran in place');
      assert.deepEqual(spaced.optimizer.getState(), plain.optimizer.getState());
      tf.dispose([...plain.weights, ...spaced.weights].map((w) => w.variable));
    });
  }
});
