import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../src/backend/index.js';
import { buildTransformer, disposeTransformer } from '../src/model/build.js';
import { PretrainingObjective } from '../src/train/step.js';
import { mlmBatch, tinyConfig } from './helpers.js';

// The whole training step on wasm, through every kernel of ours (matmul, GELU, dropout,
// layer norm, ...), against the cpu backend's tfjs ops: the dropout masks are the same
// on both, so with dropout on the gradients must agree too. Each step is also checked
// for leaked tensors and backend data.

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

interface StepValues {
  loss: number;
  grads: Float32Array[];
}

function step(backend: 'cpu' | 'wasm', recompute: boolean, dropout: number): Promise<StepValues> {
  return selectBackend(backend).then(() => {
    const config = tinyConfig({ hidden_dropout_prob: dropout, attention_probs_dropout_prob: dropout, num_hidden_layers: 3, hidden_size: 24, intermediate_size: 37 });
    const model = buildTransformer(config, { seed: 7 });
    const objective = new PretrainingObjective(model);
    const batch = mlmBatch(11, 3, 12, 40);
    objective.compute(batch, { dropoutSeed: 4, recompute }).grads.forEach((g) => g.dispose());
    const before = { tensors: tf.memory().numTensors, dataIds: tf.backend().numDataIds() };
    const result = objective.compute(batch, { dropoutSeed: 5, recompute });
    const values = { loss: result.loss, grads: result.grads.map((g) => g.dataSync() as Float32Array) };
    tf.dispose(result.grads);
    assert.deepEqual({ tensors: tf.memory().numTensors, dataIds: tf.backend().numDataIds() }, before, `${backend}: the step leaked`);
    disposeTransformer(model);
    return values;
  });
}

describe('a training step on wasm', () => {
  const cpu = new Map<number, StepValues>();
  before(async () => {
    for (const dropout of [0.1, 0]) cpu.set(dropout, await step('cpu', false, dropout));
  });

  for (const [recompute, dropout] of [[false, 0.1], [true, 0.1], [true, 0]] as const) {
    it(`matches cpu, loss and every gradient, dropout ${dropout}${recompute ? ', with recompute' : ''}, leaking nothing`, async () => {
      const wasm = await step('wasm', recompute, dropout);
      const reference = cpu.get(dropout)!;
      assert.ok(Math.abs(wasm.loss - reference.loss) < 1e-5, `loss ${wasm.loss} vs ${reference.loss}`);
      let worst = 0;
      let largest = 0;
      reference.grads.forEach((g, i) => {
        worst = Math.max(worst, maxAbsDiff(wasm.grads[i]!, g));
        largest = Math.max(largest, maxAbsDiff(g, new Float32Array(g.length)));
      });
      assert.ok(largest > 1e-3, 'the gradients are not all ~0');
      assert.ok(worst <= 2e-5, `max abs gradient difference ${worst}`);
    });
  }
});
