/**
 * AdaFactor's update sharded across the replicas of a run (ZeRO stage 1): instead of every
 * replica all-reducing the whole gradient and updating every parameter, each reduces its
 * segment of the gradient (reduce-scatter), updates that segment's parameters, and the new
 * values are gathered (all-gather): the same bytes on the wire as one all-reduce, and each
 * replica's update, a memory-bound pass over the model several times, shrinks to 1/N.
 *
 * AdaFactor needs more than its segment: the factored second moment of a matrix averages g^2
 * over its columns (each replica holds whole rows: the segments are cut at row boundaries,
 * so each row statistic is local) and over its rows (the column sums, summed across
 * replicas), and the update clipping and the parameter scale need sums over the whole
 * tensor. Those travel in two small all-reduces between the passes:
 *   1. reduce-scatter of the gradients; local: the sums of squares of the segment's rows and columns
 *   2. all-reduce A: loss sum, targets, hits, the squares' total (the gradient norm), the column sums
 *   3. local: the factor (1 / targets, and the norm clipping) scales the segment; the moments
 *      decay; u = g / sqrt(v + eps1) over the segment, with its sums of u^2 and of value^2
 *   4. all-reduce B: those sums per tensor, and the segment's new row statistics (and the
 *      unfactored tensors' second moments), each replica adding zeros outside its own: the
 *      sum is the gather, bit for bit
 *   5. local: value - lr * scale / clip * u over the segment, in the gradient buffer
 *   6. all-gather of the new values
 * Every replica ends with the same values and the same (small, replicated) optimizer state,
 * staged until the step commits (`commit`), as an unsharded step's `apply`. The arithmetic
 * is AdaFactor's (src/optim/adafactor.ts), summed in another order: equal to the unsharded
 * update within float32 rounding, not bit for bit. The gradient's squares are summed before
 * the factor is known and scaled by its square (the factor is one number for all).
 */
import { scaleBy, sumOfSquares } from '../backend/buffer-passes.js';
import { type AdaFactor, factoredAxes, matrixSquareSums, matrixUpdatePass, unfactoredPass } from './adafactor.js';
import { inPlacePasses, KERNEL_MIN_ELEMENTS } from './adafactor-kernel.js';
import type { ParameterAccess } from './parameters.js';

/** The collectives a sharded step runs (a Communicator's), on the same ranks in the same order. */
export interface ShardCollectives {
  readonly rank: number;
  readonly size: number;
  reduceScatter(buffers: Float32Array[], bounds: readonly number[]): Promise<void>;
  allGatherSegments(buffers: Float32Array[], bounds: readonly number[]): Promise<void>;
  allReduce(buffers: Float32Array[], options: { op: 'sum' }): Promise<void>;
}

/** Sums across the replicas, ready to check: `factor` is asked for with them. */
export interface ShardTotals {
  readonly lossSum: number;
  readonly targets: number;
  readonly correct: number;
  /** Sum of the squares of the gradient sums (before any division). */
  readonly gradientSquares: number;
}

export interface ShardedStepInput {
  /** The replica's gradient sums, one per parameter, as views of one buffer in `params` order. */
  readonly grads: Float32Array[];
  readonly lossSum: number;
  readonly targets: number;
  readonly correct: number;
  readonly params: ParameterAccess;
  /** The base rule's slot `name` of parameter `index` (Optimizer.baseSlots). */
  readonly slot: (index: number, name: string) => Float32Array;
  /** The step number (1 for the first) and learning rate the update uses. */
  readonly step: number;
  readonly lr: number;
  /**
   * Memory for the segment's values (`segmentElements` floats) and the kernels' statistics
   * (the optimizer's workspace), in the reducer's memory for the SIMD passes.
   */
  readonly workspace?: { readonly value: Float32Array; readonly scratch: Float32Array };
  /** The factor every gradient is multiplied by (1 / targets, times the clipping); throws to stop the step. */
  readonly factor: (totals: ShardTotals) => number;
}

export interface ShardedStep {
  readonly totals: ShardTotals;
  /** Seconds in the collectives, and in this replica's passes. */
  readonly collectiveSeconds: number;
  readonly updateSeconds: number;
  /** Writes the new values (gathered into `grads`) and the new optimizer state: the step is applied. */
  commit(): void;
}

/**
 * The squares of gradient sums (not yet divided by the targets) travel as float32, shifted
 * down by this power of two (exact): a diverging run's gradient norm reaches the clipping
 * instead of overflowing, while what underflows (sums below 6e-36) is far below eps1's share.
 */
const SQUARES_SHIFT = 2 ** -32;

/** How one tensor is split and updated. */
interface TensorPlan {
  readonly index: number;
  readonly offset: number;
  readonly size: number;
  /** Factored: a rows x cols matrix whose segments are whole rows; `lo` per column, `hi` per row. */
  readonly matrix?: { rows: number; cols: number; a1First: boolean };
  /** A matrix's column sums in all-reduce A: from TOTALS_A + columnsAt. */
  readonly columnsAt: number;
  /** Its new row statistic (a matrix) or second moment (unfactored) in all-reduce B, after the per-tensor sums: from 2 x tensors + statAt. */
  readonly statAt: number;
}

/** All-reduce A: loss sum, targets, hits and the squares' total, then the column sums. */
const TOTALS_A = 4;

export class ShardedAdaFactor {
  readonly bounds: readonly number[];
  private readonly tensors: readonly TensorPlan[];
  /** Floats of all-reduce A and B. */
  private readonly lengthA: number;
  private readonly lengthB: number;

  private constructor(
    readonly rule: AdaFactor,
    readonly names: readonly string[],
    tensors: TensorPlan[],
    readonly ranks: number,
  ) {
    this.tensors = tensors;
    this.bounds = rowAlignedBounds(tensors, ranks);
    const last = tensors.at(-1);
    this.lengthA = TOTALS_A + tensors.reduce((n, t) => n + (t.matrix?.cols ?? 0), 0);
    this.lengthB = 2 * tensors.length + (last ? last.statAt + (last.matrix?.rows ?? last.size) : 0);
  }

  /** The most elements a replica's segment holds: the room its values need in the workspace. */
  get segmentElements(): number {
    let most = 0;
    for (let r = 0; r < this.ranks; r++) most = Math.max(most, this.bounds[r + 1]! - this.bounds[r]!);
    return most;
  }

  /**
   * The plan for parameters of these shapes over `ranks` replicas; undefined where the update
   * cannot be sharded (a factored tensor of more than two axes: every replica updates all).
   */
  static plan(rule: AdaFactor, names: readonly string[], shapes: readonly (readonly number[])[], ranks: number): ShardedAdaFactor | undefined {
    let offset = 0;
    let columnsAt = 0;
    let statAt = 0;
    const tensors: TensorPlan[] = [];
    for (let index = 0; index < shapes.length; index++) {
      const shape = shapes[index]!;
      const size = shape.reduce((a, b) => a * b, 1);
      const axes = factoredAxes(shape, rule.options.minDimSizeToFactor);
      if (axes && shape.length !== 2) return undefined;
      const matrix = axes ? { rows: shape[0]!, cols: shape[1]!, a1First: axes.a1 === 0 } : undefined;
      tensors.push({ index, offset, size, matrix, columnsAt, statAt });
      offset += size;
      columnsAt += matrix?.cols ?? 0;
      statAt += matrix?.rows ?? size;
    }
    return new ShardedAdaFactor(rule, names, tensors, ranks);
  }

  async run(input: ShardedStepInput, comm: ShardCollectives): Promise<ShardedStep> {
    if (comm.size !== this.ranks) throw new Error(`a sharded update planned for ${this.ranks} replicas runs on ${comm.size}`);
    const o = this.rule.options;
    const eps1 = o.epsilon1;
    const b2 = this.rule.beta2At(input.step);
    const { grads } = input;
    const [from, to] = [this.bounds[comm.rank]!, this.bounds[comm.rank + 1]!];
    let collectiveSeconds = 0;
    let updateSeconds = 0;
    const timed = async (collective: Promise<void>): Promise<void> => {
      const started = performance.now();
      await collective;
      collectiveSeconds += (performance.now() - started) / 1000;
    };
    const clock = (): (() => void) => {
      const started = performance.now();
      return () => (updateSeconds += (performance.now() - started) / 1000);
    };

    await timed(comm.reduceScatter(grads, this.bounds));

    // this replica's part of each tensor: [start, end) of its flattened values
    const own = this.tensors.map((t) => {
      const start = Math.max(from, t.offset) - t.offset;
      const end = Math.min(to, t.offset + t.size) - t.offset;
      return end > start ? { start, end, g: grads[t.index]!.subarray(start, end) } : undefined;
    });
    const scratch = input.workspace?.scratch ?? new Float32Array(0);
    const kernelsFor = (arrays: Float32Array[]) => (input.workspace ? inPlacePasses(arrays, scratch) : undefined);

    // 1. the squares of the raw sums (eps1 comes in once they are scaled)
    let stop = clock();
    const rowSums = new Map<number, Float64Array>();
    const totalsA = new Float32Array(this.lengthA);
    let squares = 0;
    for (const t of this.tensors) {
      const part = own[t.index];
      if (t.matrix) {
        const { cols } = t.matrix;
        if (part) {
          const rows = (part.end - part.start) / cols;
          const sums = (t.size >= KERNEL_MIN_ELEMENTS && kernelsFor([part.g])?.squares(part.g, rows, cols, 0)) || matrixSquareSums(part.g, rows, cols, 0);
          for (let y = 0; y < cols; y++) totalsA[TOTALS_A + t.columnsAt + y] = sums.colSums[y]! * SQUARES_SHIFT;
          rowSums.set(t.index, sums.rowSums);
          for (const s of sums.rowSums) squares += s;
        }
      } else if (part) {
        for (const x of part.g) squares += x * x;
      }
    }
    totalsA.set([input.lossSum, input.targets, input.correct, squares * SQUARES_SHIFT]);
    stop();
    await timed(comm.allReduce([totalsA], { op: 'sum' }));
    const columnSquares = Float64Array.from(totalsA, (x) => x / SQUARES_SHIFT);
    const totals: ShardTotals = { lossSum: totalsA[0]!, targets: totalsA[1]!, correct: totalsA[2]!, gradientSquares: columnSquares[3]! };
    const factor = input.factor(totals);

    // 2. the scaled segment, the moments, u and its sums
    stop = clock();
    const f2 = factor * factor;
    const staged = new Map<number, { lo?: Float32Array; hi?: Float32Array; v?: Float32Array }>();
    // all-reduce B: per tensor the sums of u^2 and of value^2, then the statistics (TensorPlan.statAt)
    const totalsB = new Float32Array(this.lengthB);
    const sumsLength = 2 * this.tensors.length;
    const proposed = new Map<number, { u: Float32Array; value: Float32Array }>();
    for (const t of this.tensors) {
      const part = own[t.index];
      const statAt = sumsLength + t.statAt;
      const columnsAt = TOTALS_A + t.columnsAt;
      if (part && factor !== 1) scaleBy(part.g, factor);
      if (t.matrix) {
        const { rows, cols, a1First } = t.matrix;
        const [vr, vc] = [input.slot(t.index, 'vr'), input.slot(t.index, 'vc')];
        const [loOld, hiOld] = a1First ? [vr, vc] : [vc, vr];
        // every replica: the column statistic from the summed column sums
        const lo = new Float32Array(cols);
        for (let y = 0; y < cols; y++) lo[y] = b2 * loOld[y]! + ((1 - b2) * (f2 * columnSquares[columnsAt + y]! + rows * eps1)) / rows;
        const hi = new Float32Array(hiOld);
        let inverseMean: number;
        if (a1First) {
          let sum = 0;
          for (const x of lo) sum += x;
          inverseMean = cols / sum;
        } else {
          // the mean of the new row statistic over every row: the old ones are replicated, and
          // the sum of every row's squares is the sum of every column's
          let oldSum = 0;
          for (const x of hiOld) oldSum += x;
          let allSquares = 0;
          for (let y = 0; y < cols; y++) allSquares += columnSquares[columnsAt + y]!;
          inverseMean = rows / (b2 * oldSum + ((1 - b2) * (f2 * allSquares + rows * cols * eps1)) / cols);
        }
        staged.set(t.index, { lo, hi });
        if (!part) continue;
        const first = part.start / cols;
        const count = (part.end - part.start) / cols;
        const sums = rowSums.get(t.index)!;
        for (let r = 0; r < count; r++) hi[first + r] = b2 * hiOld[first + r]! + ((1 - b2) * (f2 * sums[r]! + cols * eps1)) / cols;
        const ownHi = hi.subarray(first, first + count);
        totalsB.set(ownHi, statAt + first);
        const value = readOwn(input, t, part.start, part.end, from);
        const kernels = t.size >= KERNEL_MIN_ELEMENTS ? kernelsFor([part.g, value]) : undefined;
        const result = kernels ? kernels.update(part.g, value, part.g, lo, ownHi, inverseMean, eps1) : matrixUpdatePass(part.g, value, part.g, lo, ownHi, inverseMean, eps1);
        totalsB[2 * t.index] = result.squares;
        totalsB[2 * t.index + 1] = result.valueSquares;
        proposed.set(t.index, { u: part.g, value });
      } else {
        const vOld = input.slot(t.index, 'v');
        const v = new Float32Array(vOld);
        staged.set(t.index, { v });
        if (!part) continue;
        const value = readOwn(input, t, part.start, part.end, from);
        const ownV = v.subarray(part.start, part.end);
        totalsB[2 * t.index] = unfactoredPass(part.g, vOld.subarray(part.start, part.end), ownV, part.g, b2, eps1);
        totalsB[2 * t.index + 1] = sumOfSquares(value);
        totalsB.set(ownV, statAt + part.start);
        proposed.set(t.index, { u: part.g, value });
      }
    }
    stop();
    await timed(comm.allReduce([totalsB], { op: 'sum' }));

    // 3. the step over the segment, then everyone's segments
    stop = clock();
    for (const t of this.tensors) {
      const stats = totalsB.subarray(sumsLength + t.statAt);
      const state = staged.get(t.index)!;
      if (t.matrix) state.hi!.set(stats.subarray(0, t.matrix.rows));
      else state.v!.set(stats.subarray(0, t.size));
      const mine = proposed.get(t.index);
      if (!mine) continue;
      const clip = o.clippingThreshold === null ? 1 : Math.max(1, Math.sqrt(totalsB[2 * t.index]! / t.size) / o.clippingThreshold);
      let lr = input.lr;
      if (this.rule.scalesByParameter(this.names[t.index]!)) lr *= Math.max(Math.sqrt(totalsB[2 * t.index + 1]! / t.size), o.epsilon2);
      const step = lr / clip;
      const kernels = t.size >= KERNEL_MIN_ELEMENTS ? kernelsFor([mine.u, mine.value]) : undefined;
      if (kernels) kernels.step(mine.value, mine.u, step);
      else for (let j = 0; j < mine.u.length; j++) mine.u[j] = mine.value[j]! - step * mine.u[j]!;
    }
    stop();
    await timed(comm.allGatherSegments(grads, this.bounds));

    let committed = false;
    return {
      totals,
      collectiveSeconds,
      updateSeconds,
      commit: () => {
        if (committed) throw new Error('this sharded step was committed already');
        committed = true;
        for (const t of this.tensors) {
          input.params.write(t.index, grads[t.index]!);
          const state = staged.get(t.index)!;
          if (t.matrix) {
            const [lo, hi] = t.matrix.a1First ? ['vr', 'vc'] : ['vc', 'vr'];
            input.slot(t.index, lo).set(state.lo!);
            input.slot(t.index, hi).set(state.hi!);
          } else {
            input.slot(t.index, 'v').set(state.v!);
          }
        }
      },
    };
  }
}

/**
 * The values [start, end) of tensor `t`, kept until the step pass: in the workspace at their
 * place in the segment (which starts at `from`) where it holds the segment (the kernels then
 * run on them in place), else in an array of their own.
 */
function readOwn(input: ShardedStepInput, t: TensorPlan, start: number, end: number, from: number): Float32Array {
  const at = t.offset + start - from;
  const room = input.workspace?.value;
  const into = room && room.length >= at + end - start ? room.subarray(at, at + end - start) : new Float32Array(end - start);
  input.params.readRange(t.index, start, end, into);
  return into;
}

/**
 * Segment bounds near equal shares, moved to a row boundary where they fall inside a factored
 * matrix (so that its row statistics are each on one replica); n + 1 non-decreasing offsets.
 */
function rowAlignedBounds(tensors: readonly TensorPlan[], ranks: number): number[] {
  const total = tensors.reduce((n, t) => n + t.size, 0);
  const bounds = [0];
  for (let k = 1; k < ranks; k++) {
    const target = Math.round((k * total) / ranks);
    const t = tensors.find((x) => target >= x.offset && target < x.offset + x.size);
    let cut = target;
    if (t?.matrix) cut = t.offset + Math.round((target - t.offset) / t.matrix.cols) * t.matrix.cols;
    bounds.push(Math.max(cut, bounds[k - 1]!));
  }
  bounds.push(total);
  return bounds;
}
