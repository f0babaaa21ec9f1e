/**
 * The one training step every entry point runs (the worker, the benchmarks, the tests):
 * gradients of a batch, an optional all-reduce across replicas, global-norm clipping, the
 * optimizer update. The pieces are handed in, so a worker differs from a single process
 * only by its `reducer`.
 *
 * The order binds, and is written here once:
 * 1. the objective differentiates the loss SUM when there is a reducer (so gradients add
 *    up across replicas), the local mean otherwise;
 * 2. the reducer sums gradients and the statistics (loss sum, targets, hits) in one
 *    collective, and every replica divides by the global target count: the update of N
 *    replicas equals one process on the whole batch;
 * 3. clipping reads the global gradient, after the reduction; the division by the target
 *    count and the clipping are one multiplication;
 * 4. a non-finite loss or gradient stops the run before anything is applied.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type Batch, countTargets } from '../batch.js';
import { readTensorCopy, readTensorView } from '../backend/variable-storage.js';
import { addInto, scaleBy, sumOfSquares } from '../backend/buffer-passes.js';
import type { Optimizer, OptimizerWorkspace } from '../optim/optimizer.js';
import type { ParameterAccess } from '../optim/parameters.js';
import { ShardedAdaFactor } from '../optim/sharded-adafactor.js';
import type { NamedWeight } from '../model/weights.js';
import { type StepOptions, type StepResult, TrainingError } from './step.js';

/**
 * What the trainer differentiates: `PretrainingObjective` (MLM, seq2seq), or fine-tuning's
 * `ClassificationObjective` (a batch's targets hold each sample's label at its first position).
 */
export interface TrainingObjective {
  readonly weights: NamedWeight[];
  compute(batch: Batch, options?: StepOptions): StepResult;
}

/** Sums flat buffers across the replicas of a run, in place (a communicator's all-reduce). */
export interface GradientReducer {
  allReduce(buffers: Float32Array[], options: { op: 'sum'; compression?: 'none' | 'fp16' }): Promise<void>;
  /** Zeroed memory this reducer sums fastest (Communicator.allocate: added into in place); optional. */
  allocate?(elements: number): Float32Array;
  /** The halves of the all-reduce over segments (a Communicator's), with this replica's rank among `size`: what a sharded update needs. */
  readonly rank?: number;
  readonly size?: number;
  reduceScatter?(buffers: Float32Array[], bounds: readonly number[]): Promise<void>;
  allGatherSegments?(buffers: Float32Array[], bounds: readonly number[]): Promise<void>;
}

export interface TrainerOptions {
  objective: TrainingObjective;
  optimizer: Optimizer;
  params: ParameterAccess;
  /** Global-norm clipping threshold; 0 turns clipping off (the norm is still reported). */
  clipNorm: number;
  recompute?: boolean;
  microBatches?: number;
  /** Absent in a single process. */
  reducer?: GradientReducer;
  /**
   * 'fp16': the gradients travel as float16 (half the bytes; sums accumulate in float32, see
   * the README for the error), in a collective of their own, while the loss sum and the
   * counts stay exact. Default 'none': one exact collective for everything.
   */
  compression?: 'none' | 'fp16';
  /**
   * Shard the optimizer's update across the replicas (ZeRO stage 1, src/optim/sharded-adafactor.ts)
   * where it can be: AdaFactor without a first moment (Optimizer.shardableRule), a reducer
   * with reduceScatter and allGatherSegments, two replicas or more, no compression. Otherwise, or
   * when false (the default), every replica runs the whole update.
   */
  shardUpdate?: boolean;
}

export interface StepPlacement {
  /** The step's number, for messages. */
  step?: number;
  /** Seed of this step's dropout masks; no dropout without it. */
  dropoutSeed?: number;
  /** Index of the batch's first sample in the global batch (a worker's share). */
  firstSample?: number;
  /** Micro-batches to split the batch into (default: the trainer's `microBatches`). */
  microBatches?: number;
  /**
   * The length dropout counts positions over, for the batch and every piece (StepOptions.maskLength):
   * a worker's pieces are padded each to its own longest record, and pass the step's longest.
   */
  maskLength?: number;
}

/** More samples of the same step (a worker's claims): the gradients of every piece are added up before the all-reduce. */
export interface StepPiece {
  readonly batch: Batch;
  /** Index of the piece's first sample in the global batch: its dropout masks follow from it. */
  readonly firstSample: number;
  /** Micro-batches to split the piece into (default: the trainer's `microBatches`). */
  readonly microBatches?: number;
}

export interface ReducedStep {
  /** Mean loss and accuracy over the global batch's targets. */
  readonly loss: number;
  readonly accuracy: number;
  readonly targets: number;
  /** Global norm of the gradients before clipping. */
  readonly gradNorm: number;
  /** Seconds spent in the all-reduce (0 without a reducer). */
  readonly reduceSeconds: number;
  /** Seconds of forward and backward (the objective), and of adding up the pieces' gradients and copying them out of tfjs into host buffers. */
  readonly computeSeconds: number;
  readonly copySeconds: number;
  /** Seconds of this replica's share of a sharded update, computed before the step is reported (0 unsharded: `apply` does it all). */
  readonly updateSeconds: number;
  /**
   * Applies the (reduced, clipped) gradients with the optimizer. A worker calls it only
   * when the coordinator commits the step; a step never applied is simply dropped.
   */
  apply(): { applied: boolean; lr: number };
}

export interface TrainStepReport {
  loss: number;
  accuracy: number;
  targets: number;
  gradNorm: number;
  /** Whether the optimizer stepped (not during gradient accumulation), and the learning rate it used or will use. */
  applied: boolean;
  lr: number;
}

/**
 * The L2 norm of all buffers together, accumulated in float64 (on SIMD where the buffers lie
 * in the reducer's memory, see src/backend/buffer-passes.ts).
 */
export function hostGlobalNorm(buffers: readonly Float32Array[]): number {
  let sum = 0;
  for (const b of buffers) sum += sumOfSquares(b);
  return Math.sqrt(sum);
}

function scaleInPlace(buffers: readonly Float32Array[], factor: number): void {
  if (factor === 1) return;
  for (const b of buffers) scaleBy(b, factor);
}

/** Seed of step `step`'s dropout masks: one function, so every process of a run draws the same masks. */
export function stepDropoutSeed(runSeed: number, step: number): number {
  return (Math.imul(runSeed >>> 0, 1_000_003) + step) >>> 0;
}

/**
 * Where a step's gradients are summed on the host; `staging`: the later pieces' gradients
 * pass through it on their way in (see addInto); `workspace`: where the optimizer reads the
 * values and proposes the update, in the same memory, so that its SIMD passes need no copy.
 */
interface HostBuffers {
  grads: Float32Array[];
  stats: Float32Array;
  staging: Float32Array | undefined;
  workspace: OptimizerWorkspace | undefined;
}

/** Floats of the staging slice: 1 MiB, which stays in the cache between its copy and its add. */
const STAGING_ELEMENTS = 1 << 18;

/**
 * The checks of a step's sums before anything is applied, and the one factor of the division
 * by `divisor` (the global target count where the gradients are sums, 1 for a mean) and the clipping.
 */
function checkedFactor(lossSum: number, targets: number, gradientNorm: number, divisor: number, clipNorm: number, step: number | undefined): { loss: number; gradNorm: number; factor: number } {
  const where = step === undefined ? '' : ` at step ${step}`;
  if (targets === 0) {
    throw new TrainingError(`${step === undefined ? 'a step' : `step ${step}`} has no target positions in the whole batch: check that the data has masked or target tokens`);
  }
  const loss = lossSum / targets;
  if (!Number.isFinite(loss)) {
    throw new TrainingError(`the loss became ${loss}${where} (the weights were not updated): lower the learning rate${clipNorm > 0 ? '' : ' or clip the gradients (--clip-norm)'}`);
  }
  let factor = 1 / divisor;
  // finite exactly when every gradient is (the optimizer need not look again)
  const gradNorm = gradientNorm * factor;
  if (!Number.isFinite(gradNorm)) {
    throw new TrainingError(`a gradient became ${gradNorm}${where} with a finite loss (the weights were not updated): lower the learning rate${clipNorm > 0 ? '' : ' or clip the gradients (--clip-norm)'}`);
  }
  if (clipNorm > 0 && gradNorm > clipNorm) factor *= clipNorm / gradNorm;
  return { loss, gradNorm, factor };
}

export class Trainer {
  /** The sharded update's plan for this reducer's replicas (undefined: not sharded), made at the first step. */
  #shard: ShardedAdaFactor | undefined | null = null;

  /** Host gradients and the step statistics as views of one buffer from the reducer, reused every step. */
  #host: HostBuffers | undefined;
  /** Marks the last reduced step as overwritten (its gradients live in #host). */
  #supersede: (() => void) | undefined;

  constructor(readonly options: TrainerOptions) {}

  /** Where this step's host gradients go: fresh arrays, or the reducer's memory when it offers some. */
  #hostBuffers(): HostBuffers {
    const { objective, reducer, optimizer } = this.options;
    if (!reducer?.allocate) return { grads: objective.weights.map((w) => new Float32Array(w.variable.size)), stats: new Float32Array(3), staging: undefined, workspace: undefined };
    if (!this.#host) {
      const sizes = objective.weights.map((w) => w.variable.size);
      const total = sizes.reduce((a, b) => a + b, 0);
      const room = optimizer.workspaceElements(objective.weights.map((w) => w.shape));
      // a sharded update keeps its whole segment's values at once
      const segment = this.#shardPlan()?.segmentElements ?? 0;
      room.value = Math.max(room.value, segment);
      const flat = reducer.allocate(total + 3 + STAGING_ELEMENTS + room.value + room.proposed + room.scratch);
      let at = 0;
      const next = (n: number): Float32Array => flat.subarray(at, (at += n));
      const grads = sizes.map(next);
      // the reducer sums grads and stats; the rest is never sent
      this.#host = { grads, stats: next(3), staging: next(STAGING_ELEMENTS), workspace: { value: next(room.value), proposed: next(room.proposed), scratch: next(room.scratch) } };
    }
    return this.#host;
  }

  /**
   * Gradients of the batch, all-reduced and clipped, ready to apply; nothing is changed yet.
   * `more`: further pieces of the step for this replica, asked for once the batch is done
   * and until it resolves undefined (a worker claiming records the others have not taken).
   */
  async reduce(batch: Batch, placement: StepPlacement = {}, more?: () => Promise<StepPiece | undefined>): Promise<ReducedStep> {
    const { objective, optimizer, params, clipNorm, reducer } = this.options;
    let computeSeconds = 0;
    let copySeconds = 0;
    let lossSum = 0;
    let targets = 0;
    let correct = 0;
    const host = this.#hostBuffers();
    const grads = host.grads;
    if (more && !reducer) throw new Error('pieces of a step add up gradient sums: they need a reducer');
    this.#supersede?.(); // before the shared host buffers are overwritten
    this.#supersede = undefined;
    // the first piece's gradients are copied out of tfjs, the later pieces' added to them
    // (SIMD adds in the reducer's memory: no new tensor of the model's size per piece)
    let piecesIn = 0;
    // A piece's forward and backward pass, then the ask for the next piece (`more`: a round
    // trip to the coordinator) goes out while this piece's gradients are copied out, so the
    // copy hides the round trip. Resolves with that ask, if there is one.
    const computePiece = async (piece: StepPiece): Promise<Promise<StepPiece | undefined> | undefined> => {
      // a piece without targets adds nothing (a replica's share may be empty: it still takes part in the sum)
      if (reducer && (piece.batch.batchSize === 0 || countTargets(piece.batch) === 0)) return more?.();
      const computeStart = performance.now();
      const result = objective.compute(piece.batch, {
        recompute: this.options.recompute,
        microBatches: Math.min(piece.microBatches ?? this.options.microBatches ?? 1, piece.batch.batchSize),
        dropoutSeed: placement.dropoutSeed,
        firstSample: piece.firstSample,
        maskLength: placement.maskLength,
        normalizer: reducer ? 1 : undefined,
      });
      computeSeconds += (performance.now() - computeStart) / 1000;
      let next: Promise<StepPiece | undefined> | undefined;
      try {
        next = more?.();
        // awaited once the copy is done; a refusal meanwhile is not an unhandled rejection
        next?.catch(() => {});
        // one turn of the event loop: the ask reaches the socket before the copy holds the thread
        if (next) await new Promise<void>((resolve) => setImmediate(resolve));
        const addStart = performance.now();
        // a piece that fails half-way leaves the host buffers half-added: the step fails as a whole
        result.grads.forEach((g, i) => (piecesIn === 0 ? readTensorCopy(g, grads[i]!) : addInto(grads[i]!, readTensorView(g), host.staging)));
        copySeconds += (performance.now() - addStart) / 1000;
      } finally {
        tf.dispose(result.grads);
      }
      piecesIn++;
      lossSum += result.lossSum;
      targets += result.targets;
      correct += result.correct;
      return next;
    };
    let next = await computePiece({ batch, firstSample: placement.firstSample ?? 0, microBatches: placement.microBatches });
    for (let piece = await next; piece; piece = await next) next = await computePiece(piece);
    if (piecesIn === 0) for (const g of grads) g.fill(0);
    const shard = this.#shardPlan();
    if (shard) {
      const slot = optimizer.baseSlots(params);
      const lr = optimizer.currentLearningRate;
      let checked = { loss: 0, gradNorm: 0, factor: 1 };
      const step = await shard.run(
        {
          grads,
          lossSum,
          targets,
          correct,
          params,
          slot,
          step: optimizer.completedSteps + 1,
          lr,
          workspace: host.workspace,
          factor: (totals) => (checked = checkedFactor(totals.lossSum, totals.targets, Math.sqrt(totals.gradientSquares), totals.targets, clipNorm, placement.step)).factor,
        },
        reducer as Required<GradientReducer>,
      );
      return {
        loss: checked.loss,
        accuracy: step.totals.correct / step.totals.targets,
        targets: step.totals.targets,
        gradNorm: checked.gradNorm,
        reduceSeconds: step.collectiveSeconds,
        computeSeconds,
        copySeconds,
        updateSeconds: step.updateSeconds,
        apply: this.#applyOnce(() => {
          step.commit();
          optimizer.recordExternalStep();
          return { applied: true, lr };
        }),
      };
    }
    let reduceSeconds = 0;
    if (reducer) {
      const stats = host.stats;
      stats.set([lossSum, targets, correct]);
      const started = performance.now();
      if (this.options.compression === 'fp16') {
        await reducer.allReduce(grads, { op: 'sum', compression: 'fp16' });
        await reducer.allReduce([stats], { op: 'sum', compression: 'none' });
      } else {
        await reducer.allReduce([...grads, stats], { op: 'sum', compression: 'none' });
      }
      reduceSeconds = (performance.now() - started) / 1000;
      [lossSum, targets, correct] = [stats[0]!, stats[1]!, stats[2]!];
    }
    // one factor for the division by the global target count and the clipping, applied in
    // one pass after the norm: each pass reads and writes every gradient
    // a single process differentiates the mean: nothing to divide
    const { loss, gradNorm, factor } = checkedFactor(lossSum, targets, hostGlobalNorm(grads), reducer ? targets : 1, clipNorm, placement.step);
    scaleInPlace(grads, factor);
    return {
      loss,
      accuracy: correct / targets,
      targets,
      gradNorm,
      reduceSeconds,
      computeSeconds,
      copySeconds,
      updateSeconds: 0,
      apply: this.#applyOnce(() => {
        const report = optimizer.apply(params, grads, { gradientsFinite: true, workspace: host.workspace });
        // an accumulation micro-step applies nothing: the rate the coming update uses
        return { applied: report.applied, lr: report.applied ? report.lr : optimizer.currentLearningRate };
      }),
    };
  }

  /**
   * A reduced step's `apply`: it runs once, and never after a later reduce has overwritten the
   * shared host buffers its gradients (or, sharded, its new values) lie in.
   */
  #applyOnce(run: () => { applied: boolean; lr: number }): () => { applied: boolean; lr: number } {
    let applied = false;
    let superseded = false;
    if (this.#host) this.#supersede = () => (superseded = true);
    return () => {
      if (applied) throw new Error('this step was applied already');
      if (superseded) throw new Error("this step's gradients were overwritten by a later reduce (they share the reducer's memory): apply or drop a step before reducing the next");
      applied = true;
      return run();
    };
  }

  /** Whether this trainer's steps shard the optimizer's update across the replicas (see TrainerOptions.shardUpdate). */
  get shardsUpdate(): boolean {
    return this.#shardPlan() !== undefined;
  }

  /** The sharded update's plan, where the options, the optimizer and the reducer allow one (see TrainerOptions.shardUpdate). */
  #shardPlan(): ShardedAdaFactor | undefined {
    if (this.#shard !== null) return this.#shard;
    const { reducer, optimizer, objective, shardUpdate, compression } = this.options;
    const rule = optimizer.shardableRule();
    const able = shardUpdate && rule && reducer?.reduceScatter && reducer.allGatherSegments && reducer.size !== undefined && reducer.size >= 2 && (compression ?? 'none') === 'none';
    this.#shard = able ? ShardedAdaFactor.plan(rule, objective.weights.map((w) => w.name), objective.weights.map((w) => w.shape), reducer.size!) : undefined;
    return this.#shard;
  }

  /** reduce, then apply at once: the single-process step. */
  async step(batch: Batch, placement: StepPlacement = {}): Promise<TrainStepReport> {
    const reduced = await this.reduce(batch, placement);
    const { applied, lr } = reduced.apply();
    return { loss: reduced.loss, accuracy: reduced.accuracy, targets: reduced.targets, gradNorm: reduced.gradNorm, applied, lr };
  }
}
