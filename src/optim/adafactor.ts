import { type BaseRule, NamePatterns, type ParamStep, rms } from './rule.js';
import type { SlotSpec } from './slots.js';
import { adafactorMatrixKernel, inPlaceMatrixPasses, KERNEL_MIN_ELEMENTS, type MatrixPasses, scratchElementsFor } from './adafactor-kernel.js';

export interface AdaFactorOptions {
  /** null: relative step min(1/sqrt(t), 1e-2), times 0.05 without parameter scaling. */
  learningRate: number | null;
  /** 0: no first moment at all; otherwise an EMA of the clipped update. */
  beta1: number;
  /** null: the time-dependent 1 - t^-0.8. */
  beta2: number | null;
  epsilon1: number;
  epsilon2: number;
  multiplyByParameterScale: boolean;
  /** Parameters (by regex on the name) whose update is not multiplied by their scale. */
  excludeFromParameterScale: string[];
  /** null: no update clipping. */
  clippingThreshold: number | null;
  minDimSizeToFactor: number;
}

/** bert4keras's defaults (see ../shared/reference/optimizers.md). */
export const ADAFACTOR_DEFAULTS: AdaFactorOptions = {
  learningRate: 1e-3,
  beta1: 0,
  beta2: null,
  epsilon1: 1e-30,
  epsilon2: 1e-3,
  multiplyByParameterScale: true,
  excludeFromParameterScale: [],
  clippingThreshold: 1.0,
  minDimSizeToFactor: 128,
};

/**
 * The two axes a parameter's second moment is factored over: the largest (a1, averaged
 * away in `vr`) and the second largest (a2, averaged away in `vc`), not necessarily the
 * last two. Ties go to the later axis, so a square matrix factors like a wide one.
 * null when the tensor is not factored.
 */
export function factoredAxes(shape: readonly number[], minDimSizeToFactor: number): { a1: number; a2: number } | null {
  if (shape.length < 2) return null;
  const order = shape.map((d, i) => i).sort((i, j) => shape[j]! - shape[i]! || j - i);
  const a1 = order[0]!;
  const a2 = order[1]!;
  if (shape[a2]! < minDimSizeToFactor) return null;
  return { a1, a2 };
}

function keepDimsShape(shape: readonly number[], axis: number): number[] {
  return shape.map((d, i) => (i === axis ? 1 : d));
}

/**
 * A factored tensor seen as [outer, X, mid, Y, inner], where X and Y are the two factored
 * axes in storage order, so that every loop below works for any rank.
 */
interface Blocks {
  outer: number;
  x: number;
  mid: number;
  y: number;
  inner: number;
  /** Whether a1 (the axis `vr` averages away) is the earlier of the two. */
  a1First: boolean;
}

function blocks(shape: readonly number[], a1: number, a2: number): Blocks {
  const lo = Math.min(a1, a2);
  const hi = Math.max(a1, a2);
  const prod = (from: number, to: number) => shape.slice(from, to).reduce((a, b) => a * b, 1);
  return { outer: prod(0, lo), x: shape[lo]!, mid: prod(lo + 1, hi), y: shape[hi]!, inner: prod(hi + 1, shape.length), a1First: a1 === lo };
}

/** AdaFactor (Shazeer & Stern 2018) as bert4keras implements it. */
export class AdaFactor implements BaseRule {
  readonly type = 'adafactor';
  readonly options: AdaFactorOptions;
  private readonly noScale: NamePatterns;
  private readonly layout = new Map<string, { a1: number; a2: number } | null>();

  constructor(options: Partial<AdaFactorOptions> = {}) {
    this.options = { ...ADAFACTOR_DEFAULTS, ...options };
    this.noScale = new NamePatterns(this.options.excludeFromParameterScale);
  }

  slots(name: string, shape: readonly number[]): SlotSpec[] {
    const axes = factoredAxes(shape, this.options.minDimSizeToFactor);
    const specs: SlotSpec[] = axes
      ? [
          { name: 'vr', shape: keepDimsShape(shape, axes.a1), init: 'zeros' },
          { name: 'vc', shape: keepDimsShape(shape, axes.a2), init: 'zeros' },
        ]
      : [{ name: 'v', shape: [...shape], init: 'zeros' }];
    if (this.options.beta1 > 0) specs.push({ name: 'm', shape: [...shape], init: 'zeros' });
    return specs;
  }

  /** The statistics of the SIMD passes over a large matrix, run in place when the optimizer has a workspace. */
  scratchElements(shape: readonly number[]): number {
    const axes = factoredAxes(shape, this.options.minDimSizeToFactor);
    if (!axes) return 0;
    const b = blocks(shape, axes.a1, axes.a2);
    return b.outer === 1 && b.mid === 1 && b.inner === 1 && b.x * b.y >= KERNEL_MIN_ELEMENTS ? scratchElementsFor(b.x, b.y) : 0;
  }

  /** Whether `name`'s update is multiplied by the parameter's RMS (the parameter scale). */
  scalesByParameter(name: string): boolean {
    return this.options.multiplyByParameterScale && !this.noScale.matches(name);
  }

  learningRate(step: number): number {
    const { learningRate, multiplyByParameterScale } = this.options;
    if (learningRate !== null) return learningRate;
    const relative = Math.min(1 / Math.sqrt(step), 1e-2);
    return multiplyByParameterScale ? relative : relative * 0.05;
  }

  beta2At(step: number): number {
    return this.options.beta2 ?? 1 - Math.pow(step, -0.8);
  }

  propose(p: ParamStep): void {
    const o = this.options;
    const { grad: g, value, proposed: u } = p;
    const b2 = this.beta2At(p.step);
    const eps1 = o.epsilon1;
    const key = `${p.name}:${p.shape.join('x')}`;
    let axes = this.layout.get(key);
    if (axes === undefined) this.layout.set(key, (axes = factoredAxes(p.shape, o.minDimSizeToFactor)));

    // u = g / sqrt(v + eps1), written into `proposed`; returns the sum of u^2 for the clipping
    let squares = 0;
    // the sum of value^2 for the parameter scale, when a pass above read the values already
    let valueSquares: number | undefined;
    // the SIMD passes of a large matrix: u is still in the kernel's memory
    let kernelPasses: MatrixPasses | undefined;
    if (axes) {
      const b = blocks(p.shape, axes.a1, axes.a2);
      const [lo, hi] = b.a1First ? [p.slot('vr'), p.slot('vc')] : [p.slot('vc'), p.slot('vr')];
      const large = b.outer === 1 && b.mid === 1 && b.inner === 1 && b.x * b.y >= KERNEL_MIN_ELEMENTS;
      // in place where the optimizer's workspace shares the gradient's memory, else copied into the kernel's
      const loaded = large ? ((p.scratch && inPlaceMatrixPasses(g, value, u, p.scratch, b.x, b.y, eps1)) || adafactorMatrixKernel()?.load(g, value, b.x, b.y, eps1)) : undefined;
      if (loaded) {
        kernelPasses = loaded.update(lo, hi, decayFactoredMoments(lo, hi, loaded.colSums, loaded.rowSums, b2, b.a1First), u);
        ({ squares, valueSquares } = kernelPasses);
      } else if (b.outer === 1 && b.mid === 1 && b.inner === 1) {
        ({ squares, valueSquares } = this.matrixUpdate(p, lo, hi, b.x, b.y, b.a1First, b2));
      } else {
        squares = this.factoredUpdate(p, b, b2);
      }
    } else {
      const v = p.slot('v');
      squares = unfactoredPass(g, v, v, u, b2, eps1);
    }
    // clipping, the first moment and the parameter scale fold into one pass
    const clip = o.clippingThreshold === null ? 1 : Math.max(1, Math.sqrt(squares / u.length) / o.clippingThreshold);
    let lr = p.lr;
    if (this.scalesByParameter(p.name)) {
      const scale = valueSquares === undefined ? rms(value) : value.length === 0 ? 0 : Math.sqrt(valueSquares / value.length);
      lr *= Math.max(scale, o.epsilon2);
    }
    if (kernelPasses) kernelPasses.finish(o.beta1 > 0 ? undefined : lr / clip);
    if (o.beta1 > 0) {
      const m = p.slot('m');
      const b1 = o.beta1;
      const c = (1 - b1) / clip;
      for (let i = 0; i < u.length; i++) {
        const mi = (m[i] = b1 * m[i]! + c * u[i]!);
        u[i] = value[i]! - lr * Math.fround(mi);
      }
    } else if (!kernelPasses) {
      const step = lr / clip;
      for (let i = 0; i < u.length; i++) u[i] = value[i]! - step * u[i]!;
    }
  }

  /**
   * vr = b2 vr + (1-b2) mean_a1(g^2 + eps1), vc likewise over a2, v = vr vc / mean_a2(vr).
   * `lo` holds the mean over the earlier factored axis, `hi` over the later one.
   */
  private factoredUpdate(p: ParamStep, b: Blocks, b2: number): number {
    const { grad: g, proposed: u } = p;
    const eps1 = this.options.epsilon1;
    const vr = p.slot('vr');
    const vc = p.slot('vc');
    const lo = b.a1First ? vr : vc;
    const hi = b.a1First ? vc : vr;
    const { outer, x: X, mid: M, y: Y, inner: I } = b;
    const sumLo = new Float64Array(lo.length);
    const sumHi = new Float64Array(hi.length);
    for (let o = 0, k = 0; o < outer; o++) {
      for (let x = 0; x < X; x++) {
        for (let m = 0; m < M; m++) {
          for (let y = 0; y < Y; y++) {
            const loBase = ((o * M + m) * Y + y) * I;
            const hiBase = ((o * X + x) * M + m) * I;
            for (let i = 0; i < I; i++, k++) {
              const g2 = g[k]! * g[k]! + eps1;
              sumLo[loBase + i]! += g2;
              sumHi[hiBase + i]! += g2;
            }
          }
        }
      }
    }
    for (let j = 0; j < lo.length; j++) lo[j] = b2 * lo[j]! + ((1 - b2) * sumLo[j]!) / X;
    for (let j = 0; j < hi.length; j++) hi[j] = b2 * hi[j]! + ((1 - b2) * sumHi[j]!) / Y;
    // mean of vr over a2: vr is indexed without a1, so a2 is its remaining factored axis
    // then inverted: the loop below multiplies
    const rowMean = new Float64Array(outer * M * I);
    if (b.a1First) {
      // vr = lo, indexed (o, m, y, i): average over y
      for (let o = 0; o < outer; o++)
        for (let m = 0; m < M; m++)
          for (let y = 0; y < Y; y++) for (let i = 0; i < I; i++) rowMean[(o * M + m) * I + i]! += vr[((o * M + m) * Y + y) * I + i]! / Y;
    } else {
      // vr = hi, indexed (o, x, m, i): average over x
      for (let o = 0; o < outer; o++)
        for (let x = 0; x < X; x++)
          for (let m = 0; m < M; m++) for (let i = 0; i < I; i++) rowMean[(o * M + m) * I + i]! += vr[((o * X + x) * M + m) * I + i]! / X;
    }
    for (let j = 0; j < rowMean.length; j++) rowMean[j] = 1 / rowMean[j]!;
    let squares = 0;
    for (let o = 0, k = 0; o < outer; o++) {
      for (let x = 0; x < X; x++) {
        for (let m = 0; m < M; m++) {
          for (let y = 0; y < Y; y++) {
            const loBase = ((o * M + m) * Y + y) * I;
            const hiBase = ((o * X + x) * M + m) * I;
            const meanBase = (o * M + m) * I;
            for (let i = 0; i < I; i++, k++) {
              const v = lo[loBase + i]! * hi[hiBase + i]! * rowMean[meanBase + i]!;
              const uk = (u[k] = g[k]! / Math.sqrt(v + eps1));
              squares += uk * uk;
            }
          }
        }
      }
    }
    return squares;
  }

  /**
   * The same for an X x Y matrix (every dense kernel and embedding), without the block index
   * arithmetic; its last pass also sums value^2 (in index order, as `rms` does) for the
   * parameter scale, saving a pass over the values. Large matrices run on wasm SIMD instead
   * (adafactor-kernel.ts), equal to these loops to float32 rounding.
   */
  private matrixUpdate(p: ParamStep, lo: Float32Array, hi: Float32Array, X: number, Y: number, a1First: boolean, b2: number): { squares: number; valueSquares: number } {
    const { grad: g, proposed: u, value } = p;
    const eps1 = this.options.epsilon1;
    const { colSums, rowSums } = matrixSquareSums(g, X, Y, eps1);
    const inverseMean = decayFactoredMoments(lo, hi, colSums, rowSums, b2, a1First);
    return matrixUpdatePass(g, value, u, lo, hi, inverseMean, eps1);
  }
}

/**
 * u = g / sqrt(lo[y] hi[x] inverseMean + eps1) for a matrix of hi.length rows and lo.length
 * columns (`u` may be `g`); the sums of u^2 (the clipping) and of value^2 (the parameter
 * scale), in index order. The JavaScript form of the SIMD update pass.
 */
export function matrixUpdatePass(g: Float32Array, value: Float32Array, u: Float32Array, lo: Float32Array, hi: Float32Array, inverseMean: number, eps1: number): { squares: number; valueSquares: number } {
  let squares = 0;
  let valueSquares = 0;
  const cols = lo.length;
  for (let x = 0, k = 0; x < hi.length; x++) {
    const hx = hi[x]! * inverseMean;
    for (let y = 0; y < cols; y++, k++) {
      const uk = (u[k] = g[k]! / Math.sqrt(lo[y]! * hx + eps1));
      squares += uk * uk;
      valueSquares += value[k]! * value[k]!;
    }
  }
  return { squares, valueSquares };
}

/**
 * The unfactored second moment and update: v = b2 vOld + (1 - b2)(g^2 + eps1) into `v` (which
 * may be `vOld`), u = g / sqrt(v + eps1) into `u` (which may be `g`); returns the sum of u^2.
 */
export function unfactoredPass(g: Float32Array, vOld: Float32Array, v: Float32Array, u: Float32Array, b2: number, eps1: number): number {
  let squares = 0;
  for (let i = 0; i < g.length; i++) {
    const gi = g[i]!;
    const vi = (v[i] = b2 * vOld[i]! + (1 - b2) * (gi * gi + eps1));
    const ui = (u[i] = gi / Math.sqrt(Math.fround(vi) + eps1));
    squares += ui * ui;
  }
  return squares;
}

/** Sums of g^2 + eps1 over each column and each row of a rows x cols `g`, in float64 (the JavaScript form of the SIMD squares pass). */
export function matrixSquareSums(g: Float32Array, rows: number, cols: number, eps1: number): { colSums: Float64Array; rowSums: Float64Array } {
  const colSums = new Float64Array(cols);
  const rowSums = new Float64Array(rows);
  for (let x = 0, k = 0; x < rows; x++) {
    let rowSum = 0;
    for (let y = 0; y < cols; y++, k++) {
      const g2 = g[k]! * g[k]! + eps1;
      colSums[y]! += g2;
      rowSum += g2;
    }
    rowSums[x] = rowSum;
  }
  return { colSums, rowSums };
}

/**
 * The factored second moment of an X x Y matrix, from the sums of g^2 + eps1 over each
 * column (`colSums`, length Y) and each row (`rowSums`, length X): `lo` (per column) and
 * `hi` (per row) decay by b2 towards their means. Returns 1 / mean(vr), vr being `lo` when a1
 * is the row axis, else `hi`: v = lo[y] hi[x] / mean(vr). The JavaScript passes and the SIMD
 * kernel's share it.
 */
export function decayFactoredMoments(lo: Float32Array, hi: Float32Array, colSums: ArrayLike<number>, rowSums: ArrayLike<number>, b2: number, a1First: boolean): number {
  const X = hi.length;
  const Y = lo.length;
  for (let x = 0; x < X; x++) hi[x] = b2 * hi[x]! + ((1 - b2) * rowSums[x]!) / Y;
  for (let y = 0; y < Y; y++) lo[y] = b2 * lo[y]! + ((1 - b2) * colSums[y]!) / X;
  const vr = a1First ? lo : hi;
  let vrSum = 0;
  for (let j = 0; j < vr.length; j++) vrSum += vr[j]!;
  return vr.length / vrSum;
}
