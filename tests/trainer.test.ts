import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../src/backend/index.js';
import { sliceBatch } from '../src/batch.js';
import { ReductionBuffer } from '../src/comm/simd-add.js';
import { buildTransformer, disposeTransformer } from '../src/model/build.js';
import { createOptimizer, type OptimizerConfig, VariableParameters } from '../src/optim/index.js';
import { PretrainingObjective } from '../src/train/step.js';
import { type GradientReducer, hostGlobalNorm, Trainer } from '../src/train/trainer.js';
import { mlmBatch, tinyConfig } from './helpers.js';

before(async () => {
  await selectBackend('cpu');
});

/**
 * Replicas in one process: each allReduce call waits until every replica has called it,
 * then hands each the element-wise sum. The order of the additions is fixed (replica 0
 * first), so every replica gets the same bytes.
 */
class InProcessGroup {
  private pending: { buffers: Float32Array[]; done: () => void }[] = [];
  constructor(private readonly size: number) {}

  member(): GradientReducer {
    return {
      allReduce: (buffers) =>
        new Promise<void>((done) => {
          this.pending.push({ buffers, done });
          if (this.pending.length < this.size) return;
          const calls = this.pending;
          this.pending = [];
          calls[0]!.buffers.forEach((_, b) => {
            const sum = new Float32Array(calls[0]!.buffers[b]!);
            for (const c of calls.slice(1)) c.buffers[b]!.forEach((v, i) => (sum[i]! += v));
            for (const c of calls) c.buffers[b]!.set(sum);
          });
          calls.forEach((c) => c.done());
        }),
    };
  }
}

function replica(optimizer: OptimizerConfig, reducer?: GradientReducer) {
  const model = buildTransformer(tinyConfig({ hidden_dropout_prob: 0.2, attention_probs_dropout_prob: 0.2 }), { seed: 11 });
  const objective = new PretrainingObjective(model);
  const trainer = new Trainer({ objective, optimizer: createOptimizer(optimizer), params: new VariableParameters(objective.weights), clipNorm: 0.5, reducer });
  const weights = () => objective.weights.map((w) => Array.from(w.variable.dataSync()));
  return { trainer, weights, dispose: () => disposeTransformer(model) };
}

/**
 * One process on whole batches, and two replicas that all-reduce their shares (Adam); the
 * second keeps its gradients in memory its reducer offers (Communicator.allocate in a worker:
 * a reduction buffer, where the norm, the scaling and the pieces' sums run on SIMD).
 */
function wholeAndTwoReplicas() {
  const optimizer: OptimizerConfig = { type: 'adam', learningRate: 1e-2 };
  const group = new InProcessGroup(2);
  return { whole: replica(optimizer), shares: [replica(optimizer, group.member()), replica(optimizer, { ...group.member(), allocate: (n: number) => ReductionBuffer.allocate(n, 1024) })] };
}

/** The replicas are identical, and equal the whole-batch process's weights to 1e-5. */
function assertReplicasMatchWhole(whole: ReturnType<typeof replica>, shares: ReturnType<typeof replica>[]): void {
  const reference = whole.weights();
  const [first, second] = shares.map((s) => s.weights());
  assert.deepEqual(first, second, 'the replicas are identical');
  reference.forEach((w, i) => w.forEach((v, j) => assert.ok(Math.abs(v - first![i]![j]!) < 1e-5, `weight ${i}[${j}]: ${first![i]![j]} vs ${v}`)));
}

describe('Trainer', () => {
  it('replicas that all-reduce their shares of a batch end with the parameters of one process on the whole batch (dropout, clipping, Adam)', async () => {
    const { whole, shares } = wholeAndTwoReplicas();
    for (let step = 1; step <= 3; step++) {
      const batch = mlmBatch(step, 5, 8, 40);
      const expected = await whole.trainer.step(batch, { dropoutSeed: step });
      const [a, b] = await Promise.all([
        shares[0]!.trainer.step(sliceBatch(batch, 0, 2), { dropoutSeed: step }),
        shares[1]!.trainer.step(sliceBatch(batch, 2, 5), { dropoutSeed: step, firstSample: 2 }),
      ]);
      assert.ok(expected.gradNorm > 0.5, 'clipping is active');
      for (const r of [a!, b!]) {
        assert.equal(r.targets, expected.targets);
        assert.ok(Math.abs(r.loss - expected.loss) < 1e-5, `step ${step}: loss ${r.loss} vs ${expected.loss}`);
        assert.ok(Math.abs(r.gradNorm - expected.gradNorm) < 1e-4 * expected.gradNorm, `step ${step}: norm ${r.gradNorm} vs ${expected.gradNorm}`);
      }
    }
    assertReplicasMatchWhole(whole, shares);
    [whole, ...shares].forEach((r) => r.dispose());
  });

  it('a replica that takes its share in pieces (claims) ends as one process on the whole batch; an empty first share is fine', async () => {
    const { whole, shares } = wholeAndTwoReplicas();
    for (let step = 1; step <= 2; step++) {
      const batch = mlmBatch(10 + step, 7, 8, 40);
      const expected = await whole.trainer.step(batch, { dropoutSeed: step });
      // replica 0: [0, 2) then claims [4, 5) and [6, 7); replica 1: nothing up front, then [2, 4) and [5, 6)
      const pieces = (ranges: [number, number][]) => {
        const left = [...ranges];
        return async () => {
          const next = left.shift();
          return next && { batch: sliceBatch(batch, next[0], next[1]), firstSample: next[0], microBatches: next[1] - next[0] };
        };
      };
      const [a, b] = await Promise.all([
        shares[0]!.trainer.reduce(sliceBatch(batch, 0, 2), { dropoutSeed: step }, pieces([[4, 5], [6, 7]])),
        shares[1]!.trainer.reduce(sliceBatch(batch, 2, 2), { dropoutSeed: step, firstSample: 2 }, pieces([[2, 4], [5, 6]])),
      ]);
      for (const r of [a!, b!]) {
        assert.equal(r.targets, expected.targets);
        assert.ok(Math.abs(r.loss - expected.loss) < 1e-5, `step ${step}: loss ${r.loss} vs ${expected.loss}`);
        assert.ok(Math.abs(r.gradNorm - expected.gradNorm) < 1e-4 * expected.gradNorm, `step ${step}: norm ${r.gradNorm} vs ${expected.gradNorm}`);
        r.apply();
      }
    }
    assertReplicasMatchWhole(whole, shares);
    await assert.rejects(whole.trainer.reduce(mlmBatch(1, 2, 8, 40), {}, async () => undefined), /need a reducer/);
    // each piece is split into the micro-batches it asks for (a worker's --micro-batch), the first one too
    const trainer = shares[0]!.trainer;
    const seen: number[] = [];
    const objective = trainer.options.objective;
    const counting = new Trainer({ ...trainer.options, objective: { weights: objective.weights, compute: (b, o) => (seen.push(o?.microBatches ?? 1), objective.compute(b, o)) }, reducer: new InProcessGroup(1).member() });
    const batch = mlmBatch(30, 6, 8, 40);
    const pieces = [{ batch: sliceBatch(batch, 3, 6), firstSample: 3, microBatches: 3 }];
    (await counting.reduce(sliceBatch(batch, 0, 3), { dropoutSeed: 1, microBatches: 2 }, async () => pieces.shift())).apply();
    assert.deepEqual(seen, [2, 3]);
    // a claim that fails after the share was computed: the step fails, and no gradient tensor is left behind
    const before = tf.memory().numTensors;
    await assert.rejects(counting.reduce(sliceBatch(batch, 0, 3), { dropoutSeed: 1 }, async () => Promise.reject(new Error('claim refused'))), /claim refused/);
    assert.equal(tf.memory().numTensors, before, 'the share\'s gradients were disposed');
    [whole, ...shares].forEach((r) => r.dispose());
  });

  it('with memory from the reducer, the gradients reuse it and a step overwritten by a later reduce refuses to apply', async () => {
    let allocations = 0;
    const r = replica({ type: 'adam', learningRate: 1e-2 }, { ...new InProcessGroup(1).member(), allocate: (n: number) => (allocations++, new Float32Array(n)) });
    const first = await r.trainer.reduce(mlmBatch(3, 2, 8, 40), { dropoutSeed: 1 });
    const before = r.weights();
    const second = await r.trainer.reduce(mlmBatch(4, 2, 8, 40), { dropoutSeed: 2 });
    assert.throws(() => first.apply(), /overwritten by a later reduce/);
    assert.deepEqual(r.weights(), before, 'the refused step changed nothing');
    second.apply();
    (await r.trainer.reduce(mlmBatch(5, 2, 8, 40), { dropoutSeed: 3 })).apply();
    assert.equal(allocations, 1, 'one buffer for every step');
    r.dispose();
  });

  it('reduce changes nothing until apply, and a step applies once', async () => {
    const r = replica({ type: 'adam', learningRate: 1e-2 });
    const before = r.weights();
    const reduced = await r.trainer.reduce(mlmBatch(3, 2, 8, 40), { dropoutSeed: 1 });
    assert.deepEqual(r.weights(), before, 'a reduced step that is not committed leaves the weights alone');
    assert.deepEqual(reduced.apply(), { applied: true, lr: 1e-2 });
    assert.notDeepEqual(r.weights(), before);
    assert.throws(() => reduced.apply(), /applied already/);
    r.dispose();
  });

  it('reports the norm before clipping and stops on a non-finite loss before updating', async () => {
    assert.equal(hostGlobalNorm([new Float32Array([3, 0]), new Float32Array([4])]), 5);
    const r = replica({ type: 'sgd', learningRate: 1e30 });
    const before = r.weights();
    await r.trainer.step(mlmBatch(1, 2, 8, 40), { step: 1 });
    assert.notDeepEqual(r.weights(), before);
    let failure: unknown;
    for (let step = 2; step <= 6 && !failure; step++) {
      const weights = r.weights();
      failure = await r.trainer.step(mlmBatch(step, 2, 8, 40), { step }).then(() => undefined, (e: unknown) => e);
      if (failure) assert.deepEqual(r.weights(), weights, 'nothing applied');
    }
    assert.match(String(failure), /TrainingError: the loss became (NaN|Infinity|-Infinity) at step \d/);
    r.dispose();
  });
});
