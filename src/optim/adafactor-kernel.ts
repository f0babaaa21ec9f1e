/**
 * AdaFactor's factored update of a large matrix with wasm SIMD (src/backend/simd/adafactor.ts):
 * the gradient and the values are copied into a memory of the optimizer's own, the two
 * passes run there four lanes at a time, and the update comes back in one copy. Only the
 * arithmetic lives here: the moments' decay between the passes is AdaFactor's
 * (`decayFactoredMoments`), shared with its JavaScript passes. Three
 * copies and two SIMD passes cost about a third of the JavaScript passes on the token
 * embedding. Results equal `AdaFactor.matrixUpdate`'s to float32 rounding: products are
 * float32, sums float64.
 */
import { kernelModule } from '../backend/wasm/simd-module.js';

interface AdaFactorExports {
  adafactorSquares(g: number, rows: number, cols: number, colSums: number, rowSums: number, eps1: number): void;
  adafactorUpdate(g: number, value: number, u: number, colStat: number, rowStat: number, inverseMean: number, eps1: number, rows: number, cols: number, sums: number): void;
  adafactorStep(value: number, u: number, n: number, step: number): void;
}

/** Below this many elements the copies cost more than the lanes save: the JavaScript passes run. */
export const KERNEL_MIN_ELEMENTS = 1 << 16;

const PAGE = 65536;
const align = (bytes: number): number => (bytes + 15) & ~15;

class MatrixKernel {
  private memory: WebAssembly.Memory;
  private readonly exports: AdaFactorExports;

  constructor() {
    this.memory = new WebAssembly.Memory({ initial: 1 });
    this.exports = new WebAssembly.Instance(kernelModule(), { env: { memory: this.memory } }).exports as unknown as AdaFactorExports;
  }

  /** False when the memory cannot grow that far (wasm32's 4 GiB, or the host's memory). */
  private reserve(bytes: number): boolean {
    const have = this.memory.buffer.byteLength;
    if (bytes <= have) return true;
    try {
      this.memory.grow(Math.ceil((bytes - have) / PAGE));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * The first pass of `AdaFactor.matrixUpdate` for a rows x cols matrix `g` (`value` the
   * same shape): both are copied in, and the sums of g^2 + eps1 over each column and each
   * row come back (views of the kernel's memory, valid until the next `load`). Undefined,
   * with nothing changed, when the matrix does not fit the kernel's memory: the caller runs
   * the JavaScript passes instead.
   */
  load(g: Float32Array, value: Float32Array, rows: number, cols: number, eps1: number): LoadedMatrix | undefined {
    const n = rows * cols;
    const gAt = 0;
    const valueAt = align(gAt + 4 * n);
    const uAt = align(valueAt + 4 * n);
    const loAt = align(uAt + 4 * n);
    const hiAt = align(loAt + 4 * cols);
    const colSumsAt = align(hiAt + 4 * rows);
    const rowSumsAt = align(colSumsAt + 8 * cols);
    const sumsAt = align(rowSumsAt + 8 * rows);
    if (!this.reserve(sumsAt + 16)) return undefined;
    // views after the growth: growing detaches the old ones
    const buffer = this.memory.buffer;
    new Float32Array(buffer, gAt, n).set(g);
    new Float32Array(buffer, valueAt, n).set(value);
    this.exports.adafactorSquares(gAt, rows, cols, colSumsAt, rowSumsAt, eps1);
    return {
      colSums: new Float64Array(buffer, colSumsAt, cols),
      rowSums: new Float64Array(buffer, rowSumsAt, rows),
      /**
       * The second pass, given the decayed `lo` (per column) and `hi` (per row) and
       * 1 / mean(vr): u = g / sqrt(lo[c] hi[r] / mean(vr) + eps1), with the sums of u^2 and
       * of value^2; `finish` then writes u, or value - step * u, into the caller's `u`.
       */
      update: (lo, hi, inverseMean, u) => {
        new Float32Array(buffer, loAt, cols).set(lo);
        new Float32Array(buffer, hiAt, rows).set(hi);
        this.exports.adafactorUpdate(gAt, valueAt, uAt, loAt, hiAt, inverseMean, eps1, rows, cols, sumsAt);
        const sums = new Float64Array(buffer, sumsAt, 2);
        return {
          squares: sums[0]!,
          valueSquares: sums[1]!,
          finish: (step) => {
            if (step !== undefined) this.exports.adafactorStep(valueAt, uAt, n, step);
            u.set(new Float32Array(buffer, uAt, n));
          },
        };
      },
    };
  }
}

export interface LoadedMatrix {
  readonly colSums: Float64Array;
  readonly rowSums: Float64Array;
  update(lo: Float32Array, hi: Float32Array, inverseMean: number, u: Float32Array): MatrixPasses;
}

export interface MatrixPasses {
  readonly squares: number;
  readonly valueSquares: number;
  /** Must be called before the next `run`: it writes u, or value - step * u, into the caller's `u`. */
  finish(step?: number): void;
}

let kernel: MatrixKernel | null | undefined;

/** The kernel, or null where it cannot run (no kernels.wasm, no WebAssembly SIMD): the JavaScript passes run then. */
export function adafactorMatrixKernel(): MatrixKernel | null {
  if (kernel === undefined) {
    try {
      kernel = new MatrixKernel();
    } catch {
      kernel = null;
    }
  }
  return kernel;
}
