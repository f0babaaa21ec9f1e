import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Communicator } from '../src/comm/index.js';
import { AdaFactor, HostParameters, Optimizer, PiecewiseLinearSchedule, WeightDecay } from '../src/optim/index.js';
import { ShardedAdaFactor } from '../src/optim/sharded-adafactor.js';
import { commServers } from './fixtures/comm-inprocess.js';
import { lcg } from './helpers.js';

// the replicas of a sharded step in one process, with real communicators over 127.0.0.1

const SPECS = [
  { name: 'embeddings', shape: [600, 128] }, // factored, rows the larger axis, large enough for the SIMD passes
  { name: 'norm/gamma', shape: [37] }, // a second moment per value
  { name: 'dense/kernel', shape: [130, 300] }, // factored, columns the larger axis (vr per row)
  { name: 'square/kernel', shape: [140, 140] }, // factored, a tie: the later axis is a1
  { name: 'segment', shape: [2, 16] }, // too narrow to factor
  { name: 'dense/bias', shape: [300] },
];
/** Per step: gradients of 1e18 (a diverging run) have squares past float32's range, which the clipping must still see. */
const GRADIENT_SCALES = [1, 30, 1e18];
const RULE = { learningRate: 0.01, excludeFromParameterScale: ['bias'] };
const sizeOf = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

interface Replica {
  params: HostParameters;
  optimizer: Optimizer;
  grads: Float32Array[];
  workspace?: { value: Float32Array; scratch: Float32Array };
}

/** A replica whose gradients (and workspace, with `simd`) lie in its communicator's reduction buffer, as a worker's do. */
function replica(values: readonly Float32Array[], comm: Communicator, simd: boolean, segmentElements: number): Replica {
  const optimizer = new Optimizer(new AdaFactor(RULE));
  const sizes = SPECS.map((s) => sizeOf(s.shape));
  const room = optimizer.workspaceElements(SPECS.map((s) => s.shape));
  const total = sizes.reduce((a, b) => a + b, 0);
  room.value = Math.max(room.value, segmentElements);
  const flat = simd ? comm.allocate(total + room.value + room.scratch) : new Float32Array(total);
  let at = 0;
  const next = (n: number) => flat.subarray(at, (at += n));
  const grads = sizes.map(next);
  return {
    params: new HostParameters(SPECS.map((s, i) => ({ ...s, values: new Float32Array(values[i]!) }))),
    optimizer,
    grads,
    workspace: simd ? { value: next(room.value), scratch: next(room.scratch) } : undefined,
  };
}

function maxRelativeDifference(a: Float32Array, b: Float32Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

describe('AdaFactor sharded across replicas (ZeRO stage 1)', () => {
  for (const [ranks, simd] of [[2, true], [3, true], [2, false], [4, false]] as const) {
    it(`${ranks} replicas, ${simd ? 'SIMD passes in the reduction buffer' : 'JavaScript passes'}: the update of one optimizer on the summed gradients, within float32 rounding, every replica bit-identical`, async (t) => {
      const servers = await commServers(t, ranks, 'sharded-run');
      const peers = servers.map((server) => server.address);
      const comms = servers.map((server, rank) => new Communicator(server, { generation: 1, rank, peers, chunkElements: 4096, deadlineMs: 60_000 }));
      t.after(() => comms.forEach((c) => c.close()));
      const rand = lcg(40 + ranks);
      const initial = SPECS.map((s) => Float32Array.from({ length: sizeOf(s.shape) }, () => (rand() - 0.5) * 0.2));
      const plan = ShardedAdaFactor.plan(new Optimizer(new AdaFactor(RULE)).shardableRule()!, SPECS.map((s) => s.name), SPECS.map((s) => s.shape), ranks)!;
      const replicas = comms.map((comm) => replica(initial, comm, simd, plan.segmentElements));
      const reference = { params: new HostParameters(SPECS.map((s, i) => ({ ...s, values: new Float32Array(initial[i]!) }))), optimizer: new Optimizer(new AdaFactor(RULE)) };
      // the embedding is cut at a row boundary
      for (const b of plan.bounds.slice(1, -1)) assert.ok(b >= 600 * 128 || b % 128 === 0, `bound ${b} inside a row of the embedding`);
      const clipNorm = 0.5;
      for (let step = 1; step <= 3; step++) {
        const targets = [7, 5, 3, 9].slice(0, ranks);
        // per replica gradient sums; the reference gets their sum, divided and clipped as the trainer does
        const perReplica = replicas.map(() => SPECS.map((s) => Float32Array.from({ length: sizeOf(s.shape) }, () => (rand() - 0.5) * GRADIENT_SCALES[step - 1]!)));
        const total = targets.reduce((a, b) => a + b, 0);
        const summed = SPECS.map((_, i) => {
          const out = new Float32Array(perReplica[0]![i]!.length);
          for (const g of perReplica) for (let j = 0; j < out.length; j++) out[j] = out[j]! + g[i]![j]!;
          return out;
        });
        const norm = Math.sqrt(summed.reduce((n, g) => n + g.reduce((m, x) => m + x * x, 0), 0)) / total;
        const factor = (1 / total) * (norm > clipNorm ? clipNorm / norm : 1);
        const lr = reference.optimizer.currentLearningRate;
        reference.optimizer.apply(reference.params, summed.map((g) => g.map((x) => x * factor)));

        const before = replicas.map((r) => r.params.params.map((p) => p.values.slice()));
        const steps = await Promise.all(
          replicas.map((r, rank) => {
            perReplica[rank]!.forEach((g, i) => r.grads[i]!.set(g));
            return plan.run(
              {
                grads: r.grads,
                lossSum: 2 * targets[rank]!,
                targets: targets[rank]!,
                correct: 1,
                params: r.params,
                slot: r.optimizer.baseSlots(r.params),
                step: r.optimizer.completedSteps + 1,
                lr,
                workspace: r.workspace,
                factor: (totals) => {
                  assert.equal(totals.targets, total);
                  assert.equal(totals.lossSum, 2 * total);
                  assert.ok(Math.abs(Math.sqrt(totals.gradientSquares) / total - norm) < 1e-5 * norm);
                  return factor;
                },
              },
              comms[rank]!,
            );
          }),
        );
        // nothing is applied before the commit
        replicas.forEach((r, rank) => assert.deepEqual(r.params.params.map((p) => p.values), before[rank], `replica ${rank} changed before its commit`));
        steps.forEach((s, rank) => {
          s.commit();
          replicas[rank]!.optimizer.recordExternalStep();
        });
        assert.throws(() => steps[0]!.commit(), /committed already/);
        for (let i = 0; i < SPECS.length; i++) {
          const want = reference.params.params[i]!.values;
          const got = replicas[0]!.params.params[i]!.values;
          const difference = maxRelativeDifference(got, want);
          assert.ok(difference < 2e-5, `step ${step}, ${SPECS[i]!.name}: relative difference ${difference.toExponential(2)} from the unsharded update`);
          assert.ok(got.some((x, j) => x !== initial[i]![j]), `${SPECS[i]!.name} was not updated`);
          for (const r of replicas.slice(1)) assert.deepEqual(r.params.params[i]!.values, got, `replicas differ in ${SPECS[i]!.name}`);
        }
        const wantState = reference.optimizer.getState();
        for (const r of replicas) {
          const state = r.optimizer.getState();
          assert.equal(state.iterations, step);
          assert.deepEqual(state.slots.map((s) => s.name), wantState.slots.map((s) => s.name));
          state.slots.forEach((slot, k) => {
            const difference = maxRelativeDifference(slot.data, wantState.slots[k]!.data);
            assert.ok(difference < 2e-5, `step ${step}, slot ${slot.name}: relative difference ${difference.toExponential(2)}`);
            assert.deepEqual(slot.data, replicas[0]!.optimizer.getState().slots[k]!.data, `replicas' slot ${slot.name} differ`);
          });
        }
      }
    });
  }

  it('is not planned where it cannot be: a first moment, a wrapper that changes the update, a factored tensor of three axes', () => {
    assert.equal(new Optimizer(new AdaFactor({ beta1: 0.9 })).shardableRule(), undefined);
    assert.equal(new Optimizer(new AdaFactor(), [new WeightDecay()]).shardableRule(), undefined);
    assert.ok(new Optimizer(new AdaFactor()).shardableRule());
    // a learning-rate schedule is no obstacle: the rate is one number for all
    assert.ok(new Optimizer(new AdaFactor(), [new PiecewiseLinearSchedule({ 10: 1, 100: 0 })]).shardableRule());
    assert.equal(ShardedAdaFactor.plan(new AdaFactor(), ['w'], [[130, 3, 140]], 2), undefined);
  });
});
