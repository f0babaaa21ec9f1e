/**
 * The base optimizers (AdaFactor, Adam, SGD) against independent float64 references
 * written from the formulas in shared/reference/optimizers.md (Shazeer & Stern 2018 as
 * bert4keras implements it; Adam; Keras SGD). The AdaFactor reference works on
 * N-d arrays the obvious way (flat data + shape, a generic unravel for every index),
 * not with the implementation's block layout.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Adam, AdaFactor, type AdaFactorOptions, factoredAxes, HostParameters, Optimizer, Sgd } from '../src/optim/index.js';
import { lcg } from './helpers.js';
import { adafactorMatrixKernel, KERNEL_MIN_ELEMENTS } from '../src/optim/adafactor-kernel.js';
import { decayFactoredMoments } from '../src/optim/adafactor.js';

// ---------------------------------------------------------------------------------------
// N-d array helpers (row-major flat data + shape)

type Shape = readonly number[];

function sizeOfShape(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** The multi-index of flat position `flat` in an array of `shape`. */
function unravel(flat: number, shape: Shape): number[] {
  const idx = new Array<number>(shape.length).fill(0);
  let rest = flat;
  for (let d = shape.length - 1; d >= 0; d--) {
    idx[d] = rest % shape[d]!;
    rest = Math.floor(rest / shape[d]!);
  }
  return idx;
}

/** The flat position of `idx` in an array of `shape`, broadcasting: size-1 dims read index 0. */
function ravelBroadcast(idx: readonly number[], shape: Shape): number {
  assert.equal(idx.length, shape.length);
  let flat = 0;
  for (let d = 0; d < shape.length; d++) flat = flat * shape[d]! + (shape[d] === 1 ? 0 : idx[d]!);
  return flat;
}

function keepDims(shape: Shape, axis: number): number[] {
  return shape.map((d, i) => (i === axis ? 1 : d));
}

/** mean(x, axis, keepdims=True). */
function meanOverAxis(x: ArrayLike<number>, shape: Shape, axis: number): { data: Float64Array; shape: number[] } {
  const outShape = keepDims(shape, axis);
  const out = new Float64Array(sizeOfShape(outShape));
  const n = sizeOfShape(shape);
  for (let flat = 0; flat < n; flat++) {
    const idx = unravel(flat, shape);
    out[ravelBroadcast(idx, outShape)]! += x[flat]!;
  }
  for (let j = 0; j < out.length; j++) out[j] = out[j]! / shape[axis]!;
  return { data: out, shape: outShape };
}

function rms64(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i]! * x[i]!;
  return Math.sqrt(s / x.length);
}

// ---------------------------------------------------------------------------------------
// The AdaFactor reference

interface RefAdaFactorOptions {
  learningRate: number | null;
  beta1: number;
  beta2: number | null;
  epsilon1: number;
  epsilon2: number;
  multiplyByParameterScale: boolean;
  excludeFromParameterScale: string[];
  clippingThreshold: number | null;
  minDimSizeToFactor: number;
}

const REF_DEFAULTS: RefAdaFactorOptions = {
  learningRate: 1e-3,
  beta1: 0,
  beta2: null,
  epsilon1: 1e-30,
  epsilon2: 1e-3,
  multiplyByParameterScale: true,
  excludeFromParameterScale: [],
  clippingThreshold: 1,
  minDimSizeToFactor: 128,
};

interface RefParam {
  name: string;
  shape: number[];
  theta: Float64Array;
  /** Sum over steps of |theta change|: what float32 errors in the update scale with. */
  moved: Float64Array;
  vr?: { data: Float64Array; shape: number[] };
  vc?: { data: Float64Array; shape: number[] };
  v?: Float64Array;
  m?: Float64Array;
  /** The two factored axes (largest, second largest), or null. */
  axes: { a1: number; a2: number } | null;
  /** RMS of u before clipping at the latest step. */
  lastRawRms: number;
}

/** Largest and second-largest axes; the tests never use ties, so a tie is an error here. */
function refFactoredAxes(shape: Shape, minDim: number): { a1: number; a2: number } | null {
  if (shape.length < 2) return null;
  let a1 = 0;
  for (let d = 1; d < shape.length; d++) if (shape[d]! > shape[a1]!) a1 = d;
  let a2 = -1;
  for (let d = 0; d < shape.length; d++) if (d !== a1 && (a2 < 0 || shape[d]! > shape[a2]!)) a2 = d;
  const sorted = [...shape].sort((a, b) => b - a);
  if (sorted[0] === sorted[1] || (sorted.length > 2 && sorted[1] === sorted[2])) throw new Error(`test shape [${shape.join(', ')}] has a tie among its two largest dims`);
  if (shape[a2]! < minDim) return null;
  return { a1, a2 };
}

class RefAdaFactor {
  readonly o: RefAdaFactorOptions;
  readonly params: RefParam[];
  t = 0;

  constructor(options: Partial<RefAdaFactorOptions>, params: { name: string; shape: number[]; values: Float32Array }[]) {
    this.o = { ...REF_DEFAULTS, ...options };
    this.params = params.map((p) => {
      const axes = refFactoredAxes(p.shape, this.o.minDimSizeToFactor);
      const n = sizeOfShape(p.shape);
      const r: RefParam = { name: p.name, shape: [...p.shape], theta: Float64Array.from(p.values), moved: new Float64Array(n), axes, lastRawRms: NaN };
      if (axes) {
        r.vr = { data: new Float64Array(sizeOfShape(keepDims(p.shape, axes.a1))), shape: keepDims(p.shape, axes.a1) };
        r.vc = { data: new Float64Array(sizeOfShape(keepDims(p.shape, axes.a2))), shape: keepDims(p.shape, axes.a2) };
      } else {
        r.v = new Float64Array(n);
      }
      if (this.o.beta1 > 0) r.m = new Float64Array(n);
      return r;
    });
  }

  lrAt(t: number): number {
    if (this.o.learningRate !== null) return this.o.learningRate;
    const rel = Math.min(1 / Math.sqrt(t), 1e-2);
    return this.o.multiplyByParameterScale ? rel : 0.05 * rel;
  }

  step(grads: readonly Float32Array[]): void {
    this.t += 1;
    const t = this.t;
    const o = this.o;
    const b2 = o.beta2 ?? 1 - Math.pow(t, -0.8);
    const lr = this.lrAt(t);
    this.params.forEach((p, k) => {
      const g = grads[k]!;
      const n = g.length;
      const g2 = new Float64Array(n);
      for (let i = 0; i < n; i++) g2[i] = g[i]! * g[i]! + o.epsilon1;
      // the second-moment estimate v (full size)
      const vhat = new Float64Array(n);
      if (p.axes) {
        const { a1, a2 } = p.axes;
        const r = meanOverAxis(g2, p.shape, a1);
        const c = meanOverAxis(g2, p.shape, a2);
        for (let j = 0; j < r.data.length; j++) p.vr!.data[j] = b2 * p.vr!.data[j]! + (1 - b2) * r.data[j]!;
        for (let j = 0; j < c.data.length; j++) p.vc!.data[j] = b2 * p.vc!.data[j]! + (1 - b2) * c.data[j]!;
        const vrMean = meanOverAxis(p.vr!.data, p.vr!.shape, a2);
        for (let i = 0; i < n; i++) {
          const idx = unravel(i, p.shape);
          vhat[i] = (p.vr!.data[ravelBroadcast(idx, p.vr!.shape)]! * p.vc!.data[ravelBroadcast(idx, p.vc!.shape)]!) / vrMean.data[ravelBroadcast(idx, vrMean.shape)]!;
        }
      } else {
        for (let i = 0; i < n; i++) {
          p.v![i] = b2 * p.v![i]! + (1 - b2) * g2[i]!;
          vhat[i] = p.v![i]!;
        }
      }
      let u = new Float64Array(n);
      for (let i = 0; i < n; i++) u[i] = g[i]! / Math.sqrt(vhat[i]! + o.epsilon1);
      p.lastRawRms = rms64(u);
      if (o.clippingThreshold !== null) {
        const div = Math.max(1, p.lastRawRms / o.clippingThreshold);
        for (let i = 0; i < n; i++) u[i] = u[i]! / div;
      }
      if (o.beta1 > 0) {
        for (let i = 0; i < n; i++) p.m![i] = o.beta1 * p.m![i]! + (1 - o.beta1) * u[i]!;
        u = Float64Array.from(p.m!);
      }
      let stepSize = lr;
      const excluded = o.excludeFromParameterScale.some((pat) => new RegExp(pat).test(p.name));
      if (o.multiplyByParameterScale && !excluded) stepSize *= Math.max(rms64(p.theta), o.epsilon2);
      for (let i = 0; i < n; i++) {
        const d = stepSize * u[i]!;
        p.theta[i] = p.theta[i]! - d;
        p.moved[i] = p.moved[i]! + Math.abs(d);
      }
    });
  }
}

// ---------------------------------------------------------------------------------------
// Comparison helpers

function ulp32(x: number): number {
  const a = Math.abs(x);
  if (a < 1.2e-38) return 1.4e-45;
  return 2 ** (Math.floor(Math.log2(a)) - 23);
}

/** Asserts |actual - expected| <= tol(i) for all i, reporting the worst offender. */
function assertAllClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: (i: number) => number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let bad = 0;
  let worst = -1;
  let worstRatio = 0;
  for (let i = 0; i < actual.length; i++) {
    const diff = Math.abs(actual[i]! - expected[i]!);
    const ratio = diff / tol(i);
    if (!(ratio <= 1)) {
      bad++;
      if (!(ratio <= worstRatio)) {
        worstRatio = ratio;
        worst = i;
      }
    }
  }
  if (bad > 0) {
    assert.fail(`${what}: ${bad} of ${actual.length} values differ; worst at ${worst}: expected ${expected[worst]}, got ${actual[worst]} (diff ${Math.abs(actual[worst]! - expected[worst]!)}, tolerance ${tol(worst)})`);
  }
}

const REL = 1e-5;

/** Slot / moment values: relative tolerance, plus `abs` for values that cancel towards 0. */
function assertSlotClose(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string, abs = 0): void {
  assertAllClose(actual, expected, (i) => REL * Math.abs(expected[i]!) + abs + 1e-40, what);
}

/**
 * Parameters: the float32 storage rounds each step (half an ulp each), and the update itself
 * is checked to REL of how far the value moved in total.
 */
function assertParamsClose(actual: Float32Array, ref: RefParam, steps: number, what: string): void {
  assertAllClose(actual, ref.theta, (i) => REL * ref.moved[i]! + (steps + 1) * ulp32(ref.theta[i]!), what);
}

function slotOf(opt: Optimizer, name: string): { shape: readonly number[]; data: Float32Array } {
  const s = opt.getState().slots.find((a) => a.name === name);
  assert.ok(s, `slot ${name} exists (have: ${opt.getState().slots.map((a) => a.name).join(', ')})`);
  return s;
}

function slotNames(opt: Optimizer): string[] {
  return opt
    .getState()
    .slots.map((a) => a.name)
    .sort();
}

// ---------------------------------------------------------------------------------------
// Data

/** Parameters: even positions ~U(-1, 1), odd ones ~U(-1e-4, 1e-4) (so the update is resolved in float32 there). */
function paramValues(rand: () => number, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (rand() * 2 - 1) * scale * (i % 2 === 0 ? 1 : 1e-4);
  return out;
}

/** Gradients with magnitudes spread over about two decades. */
function gradValues(rand: () => number, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const mag = Math.exp(4 * (rand() - 0.5));
    out[i] = (rand() * 2 - 1 || 0.5) * mag * scale;
  }
  return out;
}

interface Spec {
  name: string;
  shape: number[];
}

/** One optimizer and one reference over the same parameters; `grads(step)` gives each step's gradients. */
function setup(rule: AdaFactor, refOptions: Partial<RefAdaFactorOptions>, specs: Spec[], seed: number, paramScale = 1) {
  const rand = lcg(seed);
  const plist = specs.map((s) => ({ name: s.name, shape: s.shape, values: paramValues(rand, sizeOfShape(s.shape), paramScale) }));
  const initial = plist.map((p) => new Float32Array(p.values));
  const ref = new RefAdaFactor(refOptions, plist);
  const opt = new Optimizer(rule);
  const params = new HostParameters(plist);
  return { opt, ref, params, plist, initial, rand };
}

// ---------------------------------------------------------------------------------------

describe('AdaFactor against a float64 reference', () => {
  it('unfactored (1-D bias, [4, 100] matrix): parameters and v over 3 steps with default options', () => {
    const specs = [
      { name: 'bias', shape: [7] },
      { name: 'w', shape: [4, 100] },
    ];
    const { opt, ref, params, plist, rand } = setup(new AdaFactor(), {}, specs, 11);
    for (let step = 1; step <= 3; step++) {
      const grads = plist.map((p) => gradValues(rand, p.values.length, 0.1 * step));
      const report = opt.apply(params, grads);
      ref.step(grads);
      assert.equal(report.lr, 1e-3);
      assert.equal(report.iterations, step);
      for (let k = 0; k < plist.length; k++) {
        const name = plist[k]!.name;
        const v = slotOf(opt, `${name}#adafactor/v`);
        assert.deepEqual([...v.shape], specs[k]!.shape);
        assertSlotClose(v.data, ref.params[k]!.v!, `${name} v after step ${step}`);
        assertParamsClose(plist[k]!.values, ref.params[k]!, step, `${name} after step ${step}`);
      }
    }
    // beta1 = 0 and unfactored: v only, no vr/vc/m
    assert.deepEqual(slotNames(opt), ['bias#adafactor/v', 'w#adafactor/v']);
  });

  it('factored [130, 200]: vr [130, 1] (mean over the largest axis), vc [1, 200], parameters over 3 steps', () => {
    const { opt, ref, params, plist, rand } = setup(new AdaFactor(), {}, [{ name: 'w', shape: [130, 200] }], 12);
    assert.deepEqual(ref.params[0]!.axes, { a1: 1, a2: 0 });
    for (let step = 1; step <= 3; step++) {
      const grads = [gradValues(rand, 130 * 200, step === 2 ? 0.3 : 0.05)];
      opt.apply(params, grads);
      ref.step(grads);
      const vr = slotOf(opt, 'w#adafactor/vr');
      const vc = slotOf(opt, 'w#adafactor/vc');
      assert.deepEqual([...vr.shape], [130, 1]);
      assert.deepEqual([...vc.shape], [1, 200]);
      assertSlotClose(vr.data, ref.params[0]!.vr!.data, `vr after step ${step}`);
      assertSlotClose(vc.data, ref.params[0]!.vc!.data, `vc after step ${step}`);
      assertParamsClose(plist[0]!.values, ref.params[0]!, step, `w after step ${step}`);
    }
    assert.deepEqual(slotNames(opt), ['w#adafactor/vc', 'w#adafactor/vr']);
  });

  for (const shape of [[300, 259], [257, 301]]) {
    it(`factored [${shape.join(', ')}], large enough for the wasm SIMD passes (odd widths: the scalar tails too): vr, vc and parameters over 3 steps`, () => {
      assert.ok(shape[0]! * shape[1]! >= KERNEL_MIN_ELEMENTS, 'the kernel path runs');
      assert.ok(adafactorMatrixKernel() !== null, 'the kernel loads here (kernels.wasm is built)');
      const { opt, ref, params, plist, rand } = setup(new AdaFactor({ beta1: 0.9 }), { beta1: 0.9 }, [{ name: 'w', shape }], 14);
      for (let step = 1; step <= 3; step++) {
        const grads = [gradValues(rand, shape[0]! * shape[1]!, step === 2 ? 0.3 : 0.05)];
        opt.apply(params, grads);
        ref.step(grads);
        assertSlotClose(slotOf(opt, 'w#adafactor/vr').data, ref.params[0]!.vr!.data, `vr after step ${step}`);
        assertSlotClose(slotOf(opt, 'w#adafactor/vc').data, ref.params[0]!.vc!.data, `vc after step ${step}`);
        assertSlotClose(slotOf(opt, 'w#adafactor/m').data, ref.params[0]!.m!, `m after step ${step}`, 1e-6);
        assertParamsClose(plist[0]!.values, ref.params[0]!, step, `w after step ${step}`);
      }
    });
  }

  it('the SIMD passes equal their float64 formulas: lo and hi updated, u = g / sqrt(lo hi / mean(vr) + eps1), the sums of u^2 and value^2', () => {
    const rand = lcg(21);
    for (const [rows, cols, loIsVr] of [[300, 259, true], [263, 257, false]] as const) {
      const n = rows * cols;
      const g = gradValues(rand, n, 0.01);
      const value = paramValues(rand, n);
      const lo = Float32Array.from({ length: cols }, () => rand() * 1e-4);
      const hi = Float32Array.from({ length: rows }, () => rand() * 1e-4);
      const [lo0, hi0] = [Float64Array.from(lo), Float64Array.from(hi)];
      const u = new Float32Array(n);
      const b2 = 0.8;
      const eps1 = 1e-30;
      // the kernel's two passes, with AdaFactor's decay of the moments between them
      const passes = (into: Float32Array, loStat: Float32Array, hiStat: Float32Array) => {
        const loaded = adafactorMatrixKernel()!.load(g, value, rows, cols, eps1)!;
        return loaded.update(loStat, hiStat, decayFactoredMoments(loStat, hiStat, loaded.colSums, loaded.rowSums, b2, loIsVr), into);
      };
      const got = passes(u, lo, hi);
      got.finish();
      const colSums = new Float64Array(cols);
      const rowSums = new Float64Array(rows);
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
        const s2 = g[r * cols + c]! ** 2 + eps1;
        colSums[c]! += s2;
        rowSums[r]! += s2;
      }
      const loRef = lo0.map((v, c) => b2 * v + ((1 - b2) * colSums[c]!) / rows);
      const hiRef = hi0.map((v, r) => b2 * v + ((1 - b2) * rowSums[r]!) / cols);
      assertSlotClose(lo, loRef, `lo of [${rows}, ${cols}]`);
      assertSlotClose(hi, hiRef, `hi of [${rows}, ${cols}]`);
      const vr = loIsVr ? lo : hi;
      const inverseMean = vr.length / vr.reduce((a, b) => a + b, 0);
      let squares = 0;
      let valueSquares = 0;
      const uRef = new Float64Array(n);
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
        const k = r * cols + c;
        uRef[k] = g[k]! / Math.sqrt(lo[c]! * hi[r]! * inverseMean + eps1);
        squares += uRef[k]! ** 2;
        valueSquares += value[k]! ** 2;
      }
      assertAllClose(u, uRef, (k) => 1e-6 * Math.abs(uRef[k]!), `u of [${rows}, ${cols}]`);
      assert.ok(Math.abs(got.squares - squares) < 1e-6 * squares, `sum of u^2: ${got.squares} vs ${squares}`);
      assert.ok(Math.abs(got.valueSquares - valueSquares) < 1e-6 * valueSquares, `sum of value^2: ${got.valueSquares} vs ${valueSquares}`);
      // the same passes again from the same statistics, finished with a step: value - step * u
      const stepped = new Float32Array(n);
      passes(stepped, Float32Array.from(lo0), Float32Array.from(hi0)).finish(0.01);
      assertAllClose(stepped, uRef.map((x, k) => value[k]! - 0.01 * x), (k) => 1e-6 * Math.abs(value[k]!) + 2e-6 * 0.01 * Math.abs(uRef[k]!), `value - 0.01 u of [${rows}, ${cols}]`);
    }
  });

  it('factored rank 3 [256, 3, 130] (largest dims not the last two): vr [1, 3, 130], vc [256, 3, 1], parameters over 2 steps', () => {
    const { opt, ref, params, plist, rand } = setup(new AdaFactor(), {}, [{ name: 'w', shape: [256, 3, 130] }], 13);
    assert.deepEqual(ref.params[0]!.axes, { a1: 0, a2: 2 });
    for (let step = 1; step <= 2; step++) {
      const grads = [gradValues(rand, 256 * 3 * 130, 0.02 * step)];
      opt.apply(params, grads);
      ref.step(grads);
      const vr = slotOf(opt, 'w#adafactor/vr');
      const vc = slotOf(opt, 'w#adafactor/vc');
      assert.deepEqual([...vr.shape], [1, 3, 130]);
      assert.deepEqual([...vc.shape], [256, 3, 1]);
      assertSlotClose(vr.data, ref.params[0]!.vr!.data, `vr after step ${step}`);
      assertSlotClose(vc.data, ref.params[0]!.vc!.data, `vc after step ${step}`);
      assertParamsClose(plist[0]!.values, ref.params[0]!, step, `w after step ${step}`);
    }
  });

  for (const shape of [
    [3, 130, 256],
    [2, 130, 3, 256, 2],
  ]) {
    it(`factored rank ${shape.length} [${shape.join(', ')}] (the largest axis after the second largest): slots and parameters over 2 steps`, () => {
      const { opt, ref, params, plist, rand } = setup(new AdaFactor(), {}, [{ name: 'w', shape }], 14);
      const axes = ref.params[0]!.axes!;
      assert.ok(axes.a1 > axes.a2);
      for (let step = 1; step <= 2; step++) {
        const grads = [gradValues(rand, sizeOfShape(shape), 0.02 * step)];
        opt.apply(params, grads);
        ref.step(grads);
        const vr = slotOf(opt, 'w#adafactor/vr');
        const vc = slotOf(opt, 'w#adafactor/vc');
        assert.deepEqual([...vr.shape], keepDims(shape, axes.a1));
        assert.deepEqual([...vc.shape], keepDims(shape, axes.a2));
        assertSlotClose(vr.data, ref.params[0]!.vr!.data, `vr after step ${step}`);
        assertSlotClose(vc.data, ref.params[0]!.vc!.data, `vc after step ${step}`);
        assertParamsClose(plist[0]!.values, ref.params[0]!, step, `w after step ${step}`);
      }
    });
  }

  it('ties between equal dims go to the later axis (numpy argpartition order): square kernels factor like wide ones', () => {
    assert.deepEqual(factoredAxes([768, 768], 128), { a1: 1, a2: 0 });
    assert.deepEqual(factoredAxes([3, 768, 768], 128), { a1: 2, a2: 1 });
    assert.deepEqual(factoredAxes([256, 128, 128], 128), { a1: 0, a2: 2 });
    assert.deepEqual(factoredAxes([128, 256, 128], 128), { a1: 1, a2: 2 });
    assert.equal(factoredAxes([768, 127], 128), null);
    assert.equal(factoredAxes([768], 128), null);
    const opt = new Optimizer(new AdaFactor());
    opt.apply(new HostParameters([{ name: 'k', shape: [128, 128], values: new Float32Array(128 * 128).fill(0.5) }]), [new Float32Array(128 * 128).fill(0.1)]);
    assert.deepEqual([...slotOf(opt, 'k#adafactor/vr').shape], [128, 1]);
    assert.deepEqual([...slotOf(opt, 'k#adafactor/vc').shape], [1, 128]);
  });

  it('a scalar and an empty parameter update without error', () => {
    const scalar = { name: 's', shape: [] as number[], values: Float32Array.of(0.5) };
    const empty = { name: 'e', shape: [0, 130], values: new Float32Array(0) };
    const opt = new Optimizer(new AdaFactor({ beta1: 0.9 }));
    opt.apply(new HostParameters([scalar, empty]), [Float32Array.of(0.2), new Float32Array(0)]);
    // step 1: v = g^2 + eps1, u = g / |g| = 1 (RMS 1, no clipping), scale max(0.5, eps2)
    assertSlotClose(scalar.values, [0.5 - 1e-3 * 0.5 * 0.1 * 1], 'scalar after step 1');
  });

  it('factored [130, 128] (a1 before a2) with beta1 = 0.9: m = b1 m + (1 - b1) u_clipped, over 3 steps', () => {
    const specs = [
      { name: 'w', shape: [130, 128] },
      { name: 'b', shape: [5, 30] },
    ];
    const { opt, ref, params, plist, rand } = setup(new AdaFactor({ beta1: 0.9 }), { beta1: 0.9 }, specs, 14);
    assert.deepEqual(ref.params[0]!.axes, { a1: 0, a2: 1 });
    for (let step = 1; step <= 3; step++) {
      const grads = plist.map((p) => gradValues(rand, p.values.length, step === 3 ? 2 : 0.1));
      opt.apply(params, grads);
      ref.step(grads);
      for (let k = 0; k < plist.length; k++) {
        const name = plist[k]!.name;
        const m = slotOf(opt, `${name}#adafactor/m`);
        assert.deepEqual([...m.shape], specs[k]!.shape);
        assertSlotClose(m.data, ref.params[k]!.m!, `${name} m after step ${step}`, 1e-6);
        assertParamsClose(plist[k]!.values, ref.params[k]!, step, `${name} after step ${step}`);
        // the 20x larger gradient of step 3 makes RMS(u) > 1: m must take the clipped u
        if (step === 3) assert.ok(ref.params[k]!.lastRawRms > 1.2, `raw RMS(u) of ${name} at step 3: ${ref.params[k]!.lastRawRms}`);
      }
    }
    const vr = slotOf(opt, 'w#adafactor/vr');
    assert.deepEqual([...vr.shape], [1, 128]);
    assert.deepEqual([...slotOf(opt, 'w#adafactor/vc').shape], [130, 1]);
    assertSlotClose(vr.data, ref.params[0]!.vr!.data, 'vr after 3 steps');
    assert.deepEqual(slotNames(opt), ['b#adafactor/m', 'b#adafactor/v', 'w#adafactor/m', 'w#adafactor/vc', 'w#adafactor/vr']);
  });

  it('the first moment slot exists only for beta1 > 0', () => {
    const shape = [3, 4];
    const make = (beta1: number) => {
      const opt = new Optimizer(new AdaFactor({ beta1 }));
      const params = new HostParameters([{ name: 'w', shape, values: paramValues(lcg(15), 12) }]);
      opt.apply(params, [gradValues(lcg(16), 12)]);
      return slotNames(opt);
    };
    assert.deepEqual(make(0), ['w#adafactor/v']);
    assert.deepEqual(make(0.5), ['w#adafactor/m', 'w#adafactor/v']);
  });

  it('update clipping: RMS(u) > 1 is divided down to the threshold; disabled clipping and threshold 0.5 differ', () => {
    const shape = [6, 50];
    const run = (clippingThreshold: number | null) => {
      const { opt, ref, params, plist, initial } = setup(new AdaFactor({ beta2: 0.5, clippingThreshold }), { beta2: 0.5, clippingThreshold }, [{ name: 'w', shape }], 17);
      const g1 = gradValues(lcg(18), 300, 0.1);
      const noise = gradValues(lcg(19), 300, 0.01);
      const g2 = g1.map((x, i) => 3 * x + noise[i]!);
      const rawRms: number[] = [];
      for (const [step, g] of [g1, g2].entries()) {
        opt.apply(params, [g]);
        ref.step([g]);
        rawRms.push(ref.params[0]!.lastRawRms);
        assertSlotClose(slotOf(opt, 'w#adafactor/v').data, ref.params[0]!.v!, `v after step ${step + 1} (clip ${clippingThreshold})`);
        assertParamsClose(plist[0]!.values, ref.params[0]!, step + 1, `w after step ${step + 1} (clip ${clippingThreshold})`);
      }
      return { values: new Float32Array(plist[0]!.values), rawRms, initial: initial[0]! };
    };
    const clipped = run(1);
    // the case really clips: beta2 = 0.5 makes u = sqrt(2) sign(g) on step 1, and the grown gradient keeps RMS(u) > 1 on step 2
    assert.ok(clipped.rawRms[0]! > 1.4 && clipped.rawRms[1]! > 1.2, `raw RMS(u) ${clipped.rawRms.join(', ')}`);
    const unclipped = run(null);
    const half = run(0.5);
    const moved = (r: { values: Float32Array; initial: Float32Array }) => Array.from(r.values, (x, i) => x - r.initial[i]!);
    const dClip = moved(clipped);
    const dNone = moved(unclipped);
    const dHalf = moved(half);
    // unclipped moves further by about RMS(u) on each step: well above any rounding
    let ratioNone = 0;
    let ratioHalf = 0;
    for (let i = 0; i < dClip.length; i++) {
      ratioNone = Math.max(ratioNone, Math.abs(dNone[i]!) / Math.abs(dClip[i]!));
      ratioHalf = Math.max(ratioHalf, Math.abs(dHalf[i]!) / Math.abs(dClip[i]!));
    }
    assert.ok(ratioNone > 1.2, `unclipped moved ${ratioNone}x the clipped step`);
    assert.ok(ratioHalf < 0.6, `threshold 0.5 moved ${ratioHalf}x the threshold-1 step`);
  });

  it('parameter scale: floor eps2 for tiny parameters, exclusion by name, and multiplyByParameterScale false', () => {
    // step 1 with beta2_1 = 0: v = g^2 + eps1, so u = sign(g) (RMS 1, no clipping) and the step is lr * scale * sign(g)
    const lr = 1e-3;
    // (a) all parameters ~1e-6: RMS(theta) < eps2, so the scale is eps2 = 1e-3
    {
      const { opt, ref, params, plist, initial, rand } = setup(new AdaFactor(), {}, [{ name: 'w', shape: [5, 9] }], 21, 1e-6);
      assert.ok(rms64(initial[0]!) < 1e-3);
      for (let step = 1; step <= 2; step++) {
        const grads = [gradValues(rand, 45, 0.1)];
        opt.apply(params, grads);
        ref.step(grads);
        assertParamsClose(plist[0]!.values, ref.params[0]!, step, `tiny w after step ${step}`);
        if (step === 1) {
          const expected = Array.from(initial[0]!, (x, i) => x - lr * 1e-3 * Math.sign(grads[0]![i]!));
          assertAllClose(plist[0]!.values, expected, () => REL * lr * 1e-3 + 2 * ulp32(1e-6), 'tiny w after step 1 (closed form)');
        }
      }
    }
    // (b) excludeFromParameterScale ['bias']: x/bias takes lr * u, x/kernel lr * RMS(theta) * u
    {
      const specs = [
        { name: 'x/bias', shape: [7] },
        { name: 'x/kernel', shape: [5, 9] },
      ];
      const { opt, ref, params, plist, initial, rand } = setup(new AdaFactor({ excludeFromParameterScale: ['bias'] }), { excludeFromParameterScale: ['bias'] }, specs, 22);
      for (let step = 1; step <= 2; step++) {
        const grads = plist.map((p) => gradValues(rand, p.values.length, 0.1));
        opt.apply(params, grads);
        ref.step(grads);
        for (let k = 0; k < 2; k++) assertParamsClose(plist[k]!.values, ref.params[k]!, step, `${plist[k]!.name} after step ${step}`);
        if (step === 1) {
          const scaleKernel = rms64(initial[1]!);
          assert.ok(scaleKernel > 0.1);
          const eb = Array.from(initial[0]!, (x, i) => x - lr * Math.sign(grads[0]![i]!));
          const ek = Array.from(initial[1]!, (x, i) => x - lr * scaleKernel * Math.sign(grads[1]![i]!));
          assertAllClose(plist[0]!.values, eb, (i) => REL * lr + 2 * ulp32(eb[i]!), 'x/bias after step 1 (closed form, unscaled)');
          assertAllClose(plist[1]!.values, ek, (i) => REL * lr * scaleKernel + 2 * ulp32(ek[i]!), 'x/kernel after step 1 (closed form, scaled)');
        }
      }
    }
    // (c) multiplyByParameterScale false: every parameter takes lr * u
    {
      const { opt, ref, params, plist, initial, rand } = setup(new AdaFactor({ multiplyByParameterScale: false }), { multiplyByParameterScale: false }, [{ name: 'w', shape: [5, 9] }], 23);
      for (let step = 1; step <= 2; step++) {
        const grads = [gradValues(rand, 45, 0.1)];
        opt.apply(params, grads);
        ref.step(grads);
        assertParamsClose(plist[0]!.values, ref.params[0]!, step, `unscaled w after step ${step}`);
        if (step === 1) {
          const e = Array.from(initial[0]!, (x, i) => x - lr * Math.sign(grads[0]![i]!));
          assertAllClose(plist[0]!.values, e, (i) => REL * lr + 2 * ulp32(e[i]!), 'unscaled w after step 1 (closed form)');
        }
      }
    }
  });

  it('relative step: learningRate null gives min(1/sqrt(t), 1e-2), times 0.05 without parameter scaling', () => {
    const closeRel = (got: number, want: number, what: string) => assert.ok(Math.abs(got - want) <= 1e-12 * want, `${what}: expected ${want}, got ${got}`);
    for (const scaled of [true, false]) {
      const factor = scaled ? 1 : 0.05;
      const options: Partial<AdaFactorOptions> = { learningRate: null, multiplyByParameterScale: scaled };
      const { opt, ref, params, plist, rand } = setup(new AdaFactor(options), options, [{ name: 'w', shape: [3, 5] }], 31);
      closeRel(opt.currentLearningRate, 1e-2 * factor, `lr before step 1 (scaled ${scaled})`);
      for (let step = 1; step <= 2; step++) {
        const grads = [gradValues(rand, 15, 0.1)];
        const report = opt.apply(params, grads);
        ref.step(grads);
        closeRel(report.lr, 1e-2 * factor, `lr of step ${step}`);
        assertParamsClose(plist[0]!.values, ref.params[0]!, step, `w after step ${step} (scaled ${scaled})`);
      }
      closeRel(opt.currentLearningRate, Math.min(1 / Math.sqrt(3), 1e-2) * factor, 'lr before step 3');
      closeRel(opt.learningRateAt(9999), 1e-2 * factor, 'learningRateAt(9999), t = 10000');
      closeRel(opt.learningRateAt(10000), (1 / Math.sqrt(10001)) * factor, 'learningRateAt(10000)');
      closeRel(opt.learningRateAt(20000), (1 / Math.sqrt(20001)) * factor, 'learningRateAt(20000)');
      assert.ok(opt.learningRateAt(20000) < 0.00708 * factor);
    }
    // a fixed learning rate is constant
    const fixed = new Optimizer(new AdaFactor({ learningRate: 0.25 }));
    assert.equal(fixed.learningRateAt(0), 0.25);
    assert.equal(fixed.learningRateAt(20000), 0.25);
  });
});

describe('Adam against the closed form', () => {
  const lr = 1e-3;
  const b1 = 0.9;
  const b2 = 0.999;
  const eps = 1e-6;
  const n = 40;
  /** A constant gradient, including magnitudes near epsilon. */
  const constantGrad = (): Float32Array => {
    const g = gradValues(lcg(41), n, 0.1);
    g[0] = 1e-6;
    g[1] = -3e-6;
    g[2] = 5;
    return g;
  };

  it('with bias correction a constant gradient moves theta by -lr g / (|g| + eps) each step', () => {
    const g = constantGrad();
    const values = new Float32Array(n);
    const opt = new Optimizer(new Adam({ learningRate: lr, beta1: b1, beta2: b2, epsilon: eps }));
    const params = new HostParameters([{ name: 'w', shape: [n], values }]);
    for (let t = 1; t <= 5; t++) {
      opt.apply(params, [g]);
      const expected = Array.from(g, (gi) => -t * lr * (gi / (Math.abs(gi) + eps)));
      assertAllClose(values, expected, (i) => REL * Math.abs(expected[i]!) + 1e-12, `theta after step ${t}`);
      const m = slotOf(opt, 'w#adam/m');
      const v = slotOf(opt, 'w#adam/v');
      assertSlotClose(m.data, Array.from(g, (gi) => (1 - b1 ** t) * gi), `m after step ${t}`);
      assertSlotClose(v.data, Array.from(g, (gi) => (1 - b2 ** t) * gi * gi), `v after step ${t}`);
    }
  });

  it('without bias correction: m_t = (1 - b1^t) g, v_t = (1 - b2^t) g^2, theta -= lr m_t / (sqrt(v_t) + eps)', () => {
    const g = constantGrad();
    const values = new Float32Array(n);
    const opt = new Optimizer(new Adam({ learningRate: lr, beta1: b1, beta2: b2, epsilon: eps, biasCorrection: false }));
    const params = new HostParameters([{ name: 'w', shape: [n], values }]);
    const theta = new Float64Array(n);
    for (let t = 1; t <= 5; t++) {
      opt.apply(params, [g]);
      for (let i = 0; i < n; i++) {
        const gi = g[i]!;
        theta[i] = theta[i]! - (lr * (1 - b1 ** t) * gi) / (Math.sqrt((1 - b2 ** t) * gi * gi) + eps);
      }
      assertAllClose(values, theta, (i) => REL * Math.abs(theta[i]!) + 1e-12, `theta after step ${t}`);
      assertSlotClose(slotOf(opt, 'w#adam/m').data, Array.from(g, (gi) => (1 - b1 ** t) * gi), `m after step ${t}`);
      assertSlotClose(slotOf(opt, 'w#adam/v').data, Array.from(g, (gi) => (1 - b2 ** t) * gi * gi), `v after step ${t}`);
    }
    // it differs from the corrected form: step t moves by lr (1 - b1^t) / sqrt(1 - b2^t) for |g| >> eps (3.2 lr, 4.3 lr, ...)
    assert.ok(Math.abs(values[2]!) > 4 * 5 * lr, `uncorrected moved ${values[2]}`);
  });
});

describe('SGD against a hand loop', () => {
  const lr = 0.05;
  const n = 30;
  const run = (momentum: number, nesterov: boolean) => {
    const rand = lcg(51);
    const values = paramValues(rand, n);
    const theta = Float64Array.from(values);
    const velocity = new Float64Array(n);
    const moved = new Float64Array(n);
    const opt = new Optimizer(new Sgd({ learningRate: lr, momentum, nesterov }));
    const params = new HostParameters([{ name: 'w', shape: [n], values }]);
    for (let t = 1; t <= 4; t++) {
      const g = gradValues(rand, n, t);
      opt.apply(params, [g]);
      for (let i = 0; i < n; i++) {
        const gi = g[i]!;
        let d: number;
        if (momentum === 0) {
          d = -lr * gi;
        } else {
          velocity[i] = momentum * velocity[i]! - lr * gi;
          d = nesterov ? momentum * velocity[i]! - lr * gi : velocity[i]!;
        }
        theta[i] = theta[i]! + d;
        moved[i] = moved[i]! + Math.abs(d);
      }
      assertAllClose(values, theta, (i) => REL * moved[i]! + (t + 1) * ulp32(theta[i]!), `theta after step ${t} (momentum ${momentum}, nesterov ${nesterov})`);
      if (momentum > 0) assertSlotClose(slotOf(opt, 'w#sgd/velocity').data, velocity, `velocity after step ${t}`, 1e-9);
    }
    return { names: slotNames(opt), values };
  };

  it('plain SGD: theta -= lr g, no slots', () => {
    assert.deepEqual(run(0, false).names, []);
  });

  it('momentum (Keras): velocity = m velocity - lr g; theta += velocity', () => {
    assert.deepEqual(run(0.9, false).names, ['w#sgd/velocity']);
  });

  it('nesterov: theta += m velocity - lr g', () => {
    const a = run(0.9, true).values;
    const b = run(0.9, false).values;
    assert.ok(a.some((x, i) => Math.abs(x - b[i]!) > 1e-3), 'nesterov differs from plain momentum');
  });
});
