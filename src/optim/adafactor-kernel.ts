/**
 * AdaFactor's factored update of a large matrix with wasm SIMD (src/backend/simd/adafactor.ts),
 * four lanes at a time. Where the gradient, the values and the proposed update lie in one
 * memory the kernels are registered on (a worker's reduction buffer and the optimizer's
 * workspace in it), the passes run there in place (`inPlaceMatrixPasses`); otherwise the
 * gradient and the values are copied into a memory of the optimizer's own and the update
 * comes back in one copy (`load`). Only the arithmetic lives here: the moments' decay between
 * the passes is AdaFactor's (`decayFactoredMoments`), shared with its JavaScript passes. Even
 * with the three copies, the SIMD passes cost about a third of the JavaScript ones on the
 * token embedding. Results equal `AdaFactor.matrixUpdate`'s to float32 rounding: products
 * are float32, sums float64.
 */
import { simdKernelsOn } from '../backend/buffer-passes.js';
import { kernelModule } from '../backend/wasm/simd-module.js';

interface AdaFactorExports {
  adafactorSquares(g: number, rows: number, cols: number, colSums: number, rowSums: number, eps1: number): void;
  adafactorUpdate(g: number, value: number, u: number, colStat: number, rowStat: number, inverseMean: number, eps1: number, rows: number, cols: number, sums: number): void;
  adafactorStep(value: number, u: number, n: number, step: number): void;
}

/** Below this many elements the copies cost more than the lanes save: the JavaScript passes run. */
export const KERNEL_MIN_ELEMENTS = 1 << 16;

const PAGE = 65536;
// not `& ~15`: that is 32-bit arithmetic, and a reduction buffer's offsets may pass 2 GiB
const align = (bytes: number): number => Math.ceil(bytes / 16) * 16;

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
   * row come back. Undefined, with nothing changed, when the matrix does not fit the
   * kernel's memory: the caller runs the JavaScript passes instead.
   */
  load(g: Float32Array, value: Float32Array, rows: number, cols: number, eps1: number): LoadedMatrix | undefined {
    const n = rows * cols;
    const gAt = 0;
    const valueAt = align(gAt + 4 * n);
    const uAt = align(valueAt + 4 * n);
    const statsAt = align(uAt + 4 * n);
    if (!this.reserve(statsAt + statsBytes(rows, cols))) return undefined;
    // views after the growth: growing detaches the old ones
    const buffer = this.memory.buffer;
    new Float32Array(buffer, gAt, n).set(g);
    new Float32Array(buffer, valueAt, n).set(value);
    return passes(this.exports, buffer, { g: gAt, value: valueAt, u: uAt, stats: statsAt }, rows, cols, eps1);
  }
}

/** Bytes of the per-row and per-column statistics of a rows x cols matrix, as `passes` lays them out from a 16-byte boundary. */
function statsBytes(rows: number, cols: number): number {
  return align(4 * cols) + align(4 * rows) + align(8 * cols) + align(8 * rows) + 16;
}

/** Floats of scratch `inPlaceMatrixPasses` needs for a rows x cols matrix (with room to align it). */
export function scratchElementsFor(rows: number, cols: number): number {
  return Math.ceil((statsBytes(rows, cols) + 16) / 4);
}

/**
 * The passes on `exports`' memory, with the matrix at byte offsets `at.g`, `at.value` and
 * `at.u` and the statistics from `at.stats`. `finish` copies u into the array given to
 * `update`, unless u is there already (in place).
 */
function passes(exports: AdaFactorExports, buffer: ArrayBufferLike, at: { g: number; value: number; u: number; stats: number }, rows: number, cols: number, eps1: number): LoadedMatrix {
  const n = rows * cols;
  const kernels = kernelCalls(exports, buffer, at.stats, statsBytes(rows, cols));
  const [g, value, uThere] = [at.g, at.value, at.u].map((offset) => new Float32Array(buffer, offset, n)) as [Float32Array, Float32Array, Float32Array];
  const { colSums, rowSums } = kernels.squares(g, rows, cols, eps1);
  return {
    colSums,
    rowSums,
    update: (lo, hi, inverseMean, u) => {
      const sums = kernels.update(g, value, uThere, lo, hi, inverseMean, eps1);
      return {
        ...sums,
        finish: (step) => {
          if (step !== undefined) kernels.step(value, uThere, step);
          // in place, u is the caller's array already
          if (u.buffer !== buffer || u.byteOffset !== at.u) u.set(uThere);
        },
      };
    },
  };
}

/**
 * The same passes with no copy, where `g`, `value`, `u` and `scratch` lie in one memory the
 * kernels are registered on (a worker's reduction buffer, src/backend/buffer-passes.ts):
 * the matrix is read and u written where they are, and only the statistics go to `scratch`.
 * Undefined when they do not, or `scratch` is too small: the caller copies (`load`).
 * Same functions on the same values: the same bits as `load`.
 */
export function inPlaceMatrixPasses(g: Float32Array, value: Float32Array, u: Float32Array, scratch: Float32Array, rows: number, cols: number, eps1: number): LoadedMatrix | undefined {
  const n = rows * cols;
  if (g.length !== n || value.length !== n || u.length !== n) return undefined;
  const exports = simdKernelsOn([g, value, u, scratch]) as unknown as AdaFactorExports | undefined;
  if (!exports || typeof exports.adafactorSquares !== 'function') return undefined;
  const statsAt = align(scratch.byteOffset);
  if (statsAt + statsBytes(rows, cols) > scratch.byteOffset + scratch.byteLength) return undefined;
  return passes(exports, g.buffer, { g: g.byteOffset, value: value.byteOffset, u: u.byteOffset, stats: statsAt }, rows, cols, eps1);
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

/**
 * The three passes one at a time on arrays in one registered memory (see inPlaceMatrixPasses),
 * for a sharded update (src/optim/sharded-adafactor.ts), which runs each between collectives:
 * the sums of squares, then u, then the step. `scratch` (scratchElementsFor(rows, cols)
 * floats, in the same memory) holds the statistics while a pass runs; what a pass returns is
 * copied out of it. Undefined where the arrays do not share a registered memory: the
 * caller's loops run.
 */
export interface InPlacePasses {
  /** Sums of g^2 + eps1 over each column (cols) and each row (rows) of a rows x cols `g`, in float64. */
  squares(g: Float32Array, rows: number, cols: number, eps1: number): { colSums: Float64Array; rowSums: Float64Array };
  /** u = g / sqrt(colStat[c] * rowStat[r] * inverseMean + eps1) (`u` may be `g`); the sums of u^2 and of value^2. */
  update(g: Float32Array, value: Float32Array, u: Float32Array, colStat: Float32Array, rowStat: Float32Array, inverseMean: number, eps1: number): { squares: number; valueSquares: number };
  /** u = value - step * u. */
  step(value: Float32Array, u: Float32Array, step: number): void;
}

export function inPlacePasses(arrays: readonly Float32Array[], scratch: Float32Array): InPlacePasses | undefined {
  const exports = simdKernelsOn([...arrays, scratch]) as unknown as AdaFactorExports | undefined;
  if (!exports || typeof exports.adafactorSquares !== 'function') return undefined;
  const statsAt = align(scratch.byteOffset);
  return kernelCalls(exports, scratch.buffer, statsAt, scratch.byteOffset + scratch.byteLength - statsAt);
}

/**
 * The kernels' three passes on `exports`' memory (`buffer`), the arrays passed by their byte
 * offsets, with `room` bytes from `statsAt` (16-byte aligned) for the statistics of the pass
 * that runs: what a pass returns is copied out of them.
 */
function kernelCalls(exports: AdaFactorExports, buffer: ArrayBufferLike, statsAt: number, room: number): InPlacePasses {
  const fits = (rows: number, cols: number): void => {
    if (statsBytes(rows, cols) > room) throw new Error(`the optimizer's scratch holds ${room} bytes, a ${rows} x ${cols} matrix needs ${statsBytes(rows, cols)}`);
  };
  return {
    squares(g, rows, cols, eps1) {
      fits(rows, cols);
      const colSumsAt = statsAt;
      const rowSumsAt = colSumsAt + align(8 * cols);
      exports.adafactorSquares(g.byteOffset, rows, cols, colSumsAt, rowSumsAt, eps1);
      return { colSums: new Float64Array(buffer, colSumsAt, cols).slice(), rowSums: new Float64Array(buffer, rowSumsAt, rows).slice() };
    },
    update(g, value, u, colStat, rowStat, inverseMean, eps1) {
      const rows = rowStat.length;
      const cols = colStat.length;
      fits(rows, cols);
      const loAt = statsAt;
      const hiAt = loAt + align(4 * cols);
      const sumsAt = hiAt + align(4 * rows);
      new Float32Array(buffer, loAt, cols).set(colStat);
      new Float32Array(buffer, hiAt, rows).set(rowStat);
      exports.adafactorUpdate(g.byteOffset, value.byteOffset, u.byteOffset, loAt, hiAt, inverseMean, eps1, rows, cols, sumsAt);
      const sums = new Float64Array(buffer, sumsAt, 2);
      return { squares: sums[0]!, valueSquares: sums[1]! };
    },
    step(value, u, step) {
      exports.adafactorStep(value.byteOffset, u.byteOffset, u.length, step);
    },
  };
}
