import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  AdaFactor,
  Adam,
  createOptimizer,
  ExponentialMovingAverage,
  GradientAccumulation,
  HostParameters,
  LayerAdaptation,
  LazyOptimization,
  Lookahead,
  Optimizer,
  OptimizerError,
  ParameterWiseLr,
  piecewiseLinear,
  PiecewiseLinearSchedule,
  Sgd,
  WeightDecay,
} from '../src/optim/index.js';
import { lcg } from './helpers.js';

/** The toy quadratic f(theta) = 0.5 ||theta - c||^2: its gradient is theta - c. */
function quadratic(names: string[], shape: number[], seed: number) {
  const rand = lcg(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  const params = names.map((name) => ({ name, shape, values: Float32Array.from({ length: n }, () => rand() * 2 - 1) }));
  const centres = names.map(() => Float32Array.from({ length: n }, () => rand() * 2 - 1));
  const grads = () => params.map((p, i) => p.values.map((v, j) => v - centres[i]![j]!));
  return { params, host: new HostParameters(params), grads };
}

const copy = (ps: { values: Float32Array }[]) => ps.map((p) => new Float32Array(p.values));

function close(actual: ArrayLike<number>, expected: ArrayLike<number>, tol = 1e-6, what = 'values'): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    const scale = Math.max(1, Math.abs(expected[i]!));
    assert.ok(Math.abs(actual[i]! - expected[i]!) <= tol * scale, `${what}[${i}]: ${actual[i]} vs ${expected[i]}`);
  }
}

describe('weight decay', () => {
  it('adds -lr*rate*theta to the proposed value, except for names matching an exclusion pattern', () => {
    const { params, host, grads } = quadratic(['Dense/kernel', 'Dense/bias', 'Embedding-Norm/gamma'], [5], 1);
    const before = copy(params);
    const g = grads();
    const opt = new Optimizer(new Sgd({ learningRate: 0.1 }), [new WeightDecay(0.5, ['Norm', 'bias'])]);
    opt.apply(host, g);
    close(params[0]!.values, before[0]!.map((t, j) => t - 0.1 * g[0]![j]! - 0.1 * 0.5 * t));
    close(params[1]!.values, before[1]!.map((t, j) => t - 0.1 * g[1]![j]!));
    close(params[2]!.values, before[2]!.map((t, j) => t - 0.1 * g[2]![j]!));
  });

  it('decays everything with an empty exclusion list', () => {
    const { params, host, grads } = quadratic(['Dense/bias'], [4], 2);
    const before = copy(params);
    const g = grads();
    new Optimizer(new Sgd({ learningRate: 0.1 }), [new WeightDecay(0.5, [])]).apply(host, g);
    close(params[0]!.values, before[0]!.map((t, j) => t - 0.1 * g[0]![j]! - 0.05 * t));
  });
});

describe('layer adaptation (LAMB trust ratio)', () => {
  it('rescales the change to lr * ||theta|| / ||dx / lr||', () => {
    const { params, host, grads } = quadratic(['w'], [6], 3);
    const theta = copy(params)[0]!;
    const g = grads()[0]!;
    new Optimizer(new Sgd({ learningRate: 0.01 }), [new LayerAdaptation([])]).apply(host, [g]);
    const dx = g.map((x) => -0.01 * x);
    const thetaNorm = Math.hypot(...theta);
    const dxNorm = Math.hypot(...dx.map((d) => d / 0.01));
    close(params[0]!.values, theta.map((t, j) => t + dx[j]! * (thetaNorm / dxNorm)));
  });

  it('uses ratio 1 when the parameter or the change has norm 0', () => {
    assert.equal(LayerAdaptation.ratio(new Float32Array(3), Float32Array.of(1, 2, 3), 0.1), 1);
    assert.equal(LayerAdaptation.ratio(Float32Array.of(1, 2, 3), Float32Array.of(1, 2, 3), 0.1), 1);
    const zeros = { name: 'w', shape: [3], values: new Float32Array(3) };
    new Optimizer(new Sgd({ learningRate: 0.1 }), [new LayerAdaptation([])]).apply(new HostParameters([zeros]), [Float32Array.of(1, -2, 4)]);
    close(zeros.values, [-0.1, 0.2, -0.4]);
  });

  it('floors the learning rate it divides by at 1e-7', () => {
    const value = Float32Array.of(1e-3, 0);
    const proposed = Float32Array.of(1e-3, 1e-9);
    close([LayerAdaptation.ratio(value, proposed, 1e-12)], [Math.fround(1e-3) / (Math.fround(1e-9) / 1e-7)], 1e-9);
  });
});

describe('piecewise-linear learning rate', () => {
  it('interpolates between knots, prepends (0, 0) and holds after the last knot', () => {
    const knots = [[1000, 1], [2000, 0.1]] as const;
    const cases: [number, number][] = [[0, 0], [250, 0.25], [1000, 1], [1500, 0.55], [2000, 0.1], [9999, 0.1]];
    for (const [step, want] of cases) close([piecewiseLinear(step, knots)], [want], 1e-12, `step ${step}`);
    close([piecewiseLinear(5, [[0, 1], [10, 0]])], [0.5], 1e-12);
    close([piecewiseLinear(50, [[0, 2]])], [2], 1e-12);
  });

  it('scales the learning rate by the multiplier at the number of completed steps', () => {
    const opt = new Optimizer(new Sgd({ learningRate: 0.2 }), [new PiecewiseLinearSchedule({ '4': 1, '8': 0.5 })]);
    assert.deepEqual([0, 2, 4, 6, 8, 20].map((s) => opt.learningRateAt(s)), [0, 0.1, 0.2, 0.15000000000000002, 0.1, 0.1]);
    const { params, host, grads } = quadratic(['w'], [3], 4);
    const before = copy(params);
    const report = opt.apply(host, grads());
    assert.equal(report.lr, 0);
    assert.deepEqual(params[0]!.values, before[0], 'the first step of a warm-up from 0 changes nothing');
    assert.equal(opt.currentLearningRate, 0.05);
  });

  it('rejects knots that are not steps', () => {
    assert.throws(() => new PiecewiseLinearSchedule({ '-3': 1 }), /not a non-negative integer/);
    assert.throws(() => new PiecewiseLinearSchedule({}), /at least one knot/);
  });
});

describe('gradient accumulation', () => {
  it('k micro-steps equal one step on the mean gradient; nothing changes in between', () => {
    const a = quadratic(['w', 'b'], [4, 3], 5);
    const b = quadratic(['w', 'b'], [4, 3], 5);
    const accumulated = new Optimizer(new Adam({ learningRate: 0.05 }), [new PiecewiseLinearSchedule({ '2': 1 })], [new GradientAccumulation(3)]);
    const plain = new Optimizer(new Adam({ learningRate: 0.05 }), [new PiecewiseLinearSchedule({ '2': 1 })]);
    const rand = lcg(9);
    for (let step = 0; step < 3; step++) {
      const micro = [0, 1, 2].map(() => a.grads().map((g) => g.map((x) => x + rand() - 0.5)));
      const before = copy(a.params);
      for (let m = 0; m < 3; m++) {
        const report = accumulated.apply(a.host, micro[m]!);
        assert.equal(report.applied, m === 2);
        if (m < 2) {
          assert.deepEqual(copy(a.params), before, 'parameters untouched between micro-steps');
          assert.equal(accumulated.completedSteps, step);
          const slots = accumulated.getState().slots.filter((s) => !s.name.includes('gradientAccumulation'));
          if (step === 0) assert.ok(slots.every((s) => s.data.every((x) => x === 0)), 'Adam slots untouched before the first step');
        }
      }
      const mean = micro[0]!.map((g, i) => g.map((x, j) => (x + micro[1]![i]![j]! + micro[2]![i]![j]!) / 3));
      plain.apply(b.host, mean);
      a.params.forEach((p, i) => close(p.values, b.params[i]!.values, 1e-5, `step ${step} ${p.name}`));
    }
    assert.equal(accumulated.completedSteps, 3, 'optimizer steps, not micro-steps');
    assert.equal(accumulated.currentLearningRate, plain.currentLearningRate, 'schedules see optimizer steps');
  });

  it('k = 1 keeps no sums and steps at every call', () => {
    const { params, host, grads } = quadratic(['w'], [3], 16);
    const before = copy(params);
    const opt = new Optimizer(new Sgd({ learningRate: 0.1 }), [], [new GradientAccumulation(1)]);
    const g = grads();
    assert.equal(opt.apply(host, g).applied, true);
    close(params[0]!.values, before[0]!.map((t, j) => t - 0.1 * g[0]![j]!));
    assert.deepEqual(opt.getState().slots, []);
  });

  it('the first update comes after the first k micro-batches and is not empty', () => {
    const { params, host, grads } = quadratic(['w'], [3], 6);
    const before = copy(params);
    const opt = new Optimizer(new Sgd({ learningRate: 0.1 }), [], [new GradientAccumulation(2)]);
    const g = grads();
    opt.apply(host, g);
    opt.apply(host, g);
    close(params[0]!.values, before[0]!.map((t, j) => t - 0.1 * g[0]![j]!));
  });
});

describe('lookahead', () => {
  it('syncs every k steps: slow += alpha (fast - slow), fast = slow, slow starting at the parameters', () => {
    const { params, host, grads } = quadratic(['w'], [4], 7);
    const theta0 = copy(params)[0]!;
    const opt = new Optimizer(new Sgd({ learningRate: 0.1 }), [new Lookahead(2, 0.5)]);
    const g1 = grads();
    opt.apply(host, g1);
    const theta1 = theta0.map((t, j) => Math.fround(t - 0.1 * g1[0]![j]!));
    assert.deepEqual(params[0]!.values, Float32Array.from(theta1), 'no sync at step 1');
    const g2 = grads();
    opt.apply(host, g2);
    const fast = theta1.map((t, j) => Math.fround(t - 0.1 * g2[0]![j]!));
    const slow = theta0.map((s, j) => Math.fround(s + 0.5 * (fast[j]! - s)));
    assert.deepEqual(params[0]!.values, Float32Array.from(slow), 'the parameters land exactly on the slow weights');
  });

  it('a zero gradient leaves the weights where they are (bert4keras halves them at the first sync)', () => {
    const { params, host } = quadratic(['w'], [4], 8);
    const before = copy(params);
    const opt = new Optimizer(new Sgd({ learningRate: 0.1 }), [new Lookahead(1, 0.5)]);
    opt.apply(host, [new Float32Array(4)]);
    assert.deepEqual(copy(params), before);
  });
});

describe('lazy optimization', () => {
  it('rows with an all-zero gradient keep their value and their slot rows; other parameters move', () => {
    const emb = quadratic(['Embedding-Position/embeddings', 'Dense/kernel'], [6, 4], 10);
    const opt = new Optimizer(new Adam({ learningRate: 0.1 }), [new LazyOptimization(['Embedding'])]);
    opt.apply(emb.host, emb.grads());
    const afterFirst = copy(emb.params);
    const slotsAfterFirst = opt.getState().slots;
    const g = emb.grads();
    for (const p of [0, 1]) for (const r of [1, 4]) g[p]!.fill(0, r * 4, r * 4 + 4);
    opt.apply(emb.host, g);
    const slots = opt.getState().slots;
    for (const r of [0, 1, 2, 3, 4, 5]) {
      const idle = r === 1 || r === 4;
      const row = (a: Float32Array) => [...a.subarray(r * 4, r * 4 + 4)];
      assert.equal(row(emb.params[0]!.values).join() === row(afterFirst[0]!).join(), idle, `embedding row ${r}`);
      for (const name of ['adam/m', 'adam/v']) {
        const now = slots.find((s) => s.name === `Embedding-Position/embeddings#${name}`)!.data;
        const then = slotsAfterFirst.find((s) => s.name === `Embedding-Position/embeddings#${name}`)!.data;
        assert.equal(row(now).join() === row(then).join(), idle, `${name} row ${r}`);
      }
    }
    assert.notDeepEqual([...emb.params[1]!.values.subarray(4, 8)], [...afterFirst[1]!.subarray(4, 8)], 'a parameter not named moves on momentum');
  });
});

describe('lazy optimization with AdaFactor', () => {
  it('keeps idle rows of the parameter, of m and of the row-aligned factor vc; vr (one value per column) still moves', () => {
    const emb = quadratic(['Embedding-Token/embeddings'], [140, 130], 15);
    const opt = new Optimizer(new AdaFactor({ beta1: 0.9, learningRate: 0.01 }), [new LazyOptimization()]);
    opt.apply(emb.host, emb.grads());
    const before = copy(emb.params)[0]!;
    const slotsBefore = new Map(opt.getState().slots.map((s) => [s.name.split('#')[1]!, s]));
    assert.deepEqual([...slotsBefore.get('adafactor/vc')!.shape], [140, 1], 'a1 = 0 (140 rows): vc keeps one value per row');
    const g = emb.grads()[0]!;
    for (const r of [2, 77]) g.fill(0, r * 130, (r + 1) * 130);
    opt.apply(emb.host, [g]);
    const after = new Map(opt.getState().slots.map((s) => [s.name.split('#')[1]!, s]));
    const row = (a: Float32Array, r: number, w: number) => [...a.subarray(r * w, (r + 1) * w)];
    for (const r of [1, 2, 77, 78]) {
      const idle = r === 2 || r === 77;
      assert.equal(row(emb.params[0]!.values, r, 130).join() === row(before, r, 130).join(), idle, `parameter row ${r}`);
      assert.equal(row(after.get('adafactor/m')!.data, r, 130).join() === row(slotsBefore.get('adafactor/m')!.data, r, 130).join(), idle, `m row ${r}`);
      assert.equal(after.get('adafactor/vc')!.data[r] === slotsBefore.get('adafactor/vc')!.data[r], idle, `vc row ${r}`);
    }
    assert.notDeepEqual(after.get('adafactor/vr')!.data, slotsBefore.get('adafactor/vr')!.data);
  });
});

describe('parameter-wise learning rate', () => {
  it('multiplies the change by every matching substring multiplier', () => {
    const { params, host, grads } = quadratic(['Embedding-Token/embeddings', 'Dense/kernel'], [3], 11);
    const before = copy(params);
    const g = grads();
    new Optimizer(new Sgd({ learningRate: 0.1 }), [new ParameterWiseLr({ Embedding: 0.1, Token: 0.5 })]).apply(host, g);
    close(params[0]!.values, before[0]!.map((t, j) => t - 0.1 * 0.05 * g[0]![j]!));
    close(params[1]!.values, before[1]!.map((t, j) => t - 0.1 * g[1]![j]!));
  });
});

describe('EMA of weights', () => {
  it('keeps m*avg + (1-m)*theta from zero, applies it bias-corrected and restores the trained weights', () => {
    const { params, host, grads } = quadratic(['w'], [3], 12);
    const opt = new Optimizer(new Sgd({ learningRate: 0.1 }), [], [new ExponentialMovingAverage(0.9)]);
    assert.throws(() => opt.applyAverage(host), /no optimizer step/);
    const average = new Float64Array(3);
    for (let t = 1; t <= 4; t++) {
      opt.apply(host, grads());
      params[0]!.values.forEach((x, j) => (average[j] = 0.9 * average[j]! + 0.1 * x));
    }
    const trained = copy(params)[0]!;
    opt.applyAverage(host);
    close(params[0]!.values, average.map((a) => a / (1 - 0.9 ** 4)), 1e-5);
    assert.throws(() => opt.apply(host, grads()), OptimizerError);
    assert.throws(() => opt.applyAverage(host), /already applied/);
    opt.restoreTrained(host);
    assert.deepEqual(params[0]!.values, trained);
  });

  it('is refused when the optimizer keeps no average', () => {
    const { host } = quadratic(['w'], [3], 13);
    assert.throws(() => new Optimizer(new Sgd()).applyAverage(host), /keeps no EMA/);
  });
});

describe('composition', () => {
  it('runs wrappers in the written order: decay before adaptation is LAMB, after it is not', () => {
    const lr = 0.01;
    const rate = 0.3;
    const run = (order: 'decay-first' | 'adaptation-first') => {
      const { params, host, grads } = quadratic(['w'], [5], 14);
      const theta = copy(params)[0]!;
      const g = grads()[0]!;
      const wrappers = order === 'decay-first' ? [new WeightDecay(rate, []), new LayerAdaptation([])] : [new LayerAdaptation([]), new WeightDecay(rate, [])];
      new Optimizer(new Sgd({ learningRate: lr }), wrappers).apply(host, [g]);
      return { got: params[0]!.values, theta, g };
    };
    const ratio = (theta: Float32Array, dx: Float32Array) => Math.hypot(...theta) / Math.hypot(...dx.map((d) => d / lr));
    const a = run('decay-first');
    const dxA = a.theta.map((t, j) => -lr * a.g[j]! - lr * rate * t);
    close(a.got, a.theta.map((t, j) => t + dxA[j]! * ratio(a.theta, dxA)));
    const b = run('adaptation-first');
    const dxB = b.theta.map((_, j) => -lr * b.g[j]!);
    close(b.got, b.theta.map((t, j) => t + dxB[j]! * ratio(b.theta, dxB) - lr * rate * t));
    assert.notDeepEqual([...a.got], [...b.got]);
  });

  it('builds the issue example from a config and names its composition', () => {
    const opt = createOptimizer({
      type: 'adafactor',
      beta1: 0.9,
      wrappers: [
        { type: 'weightDecay', rate: 0.01, exclude: ['Norm', 'bias'] },
        { type: 'layerAdaptation' },
        { type: 'piecewiseLinear', schedule: { '3125': 1, '125000': 0 } },
      ],
    });
    assert.equal(opt.description, 'adafactor > weightDecay > layerAdaptation > piecewiseLinear');
    assert.equal(opt.learningRateAt(3125), 1e-3);
    assert.equal(createOptimizer({ type: 'lamb' }).description, 'adam > weightDecay > layerAdaptation');
    assert.equal(createOptimizer({ type: 'adamw', wrappers: [{ type: 'ema' }] }).description, 'adam > weightDecay > ema');
  });
});
