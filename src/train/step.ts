import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { LAYER } from '../model/build.js';
import { reshape } from '../model/layers/ops.js';
import { trainableWeights, type NamedWeight } from '../model/weights.js';
import { GraphExecutor } from './graph-executor.js';
import { accumulateGradients, type MicroBatchRun } from './accumulate.js';
import { sparseSoftmaxCrossEntropy } from './loss.js';
import { type Batch, countTargets } from '../batch.js';

/** A training run that cannot go on (no targets, a diverged loss): reported in one line, not as a defect. */
export class TrainingError extends Error {
  override name = 'TrainingError';
}

export interface StepOptions {
  /** Per-block gradient checkpointing. */
  recompute?: boolean;
  /** Seed of this step's dropout masks (dropout is on whenever a seed is given and the config has a rate). */
  dropoutSeed?: number;
  /**
   * Split the batch into this many micro-batches (at most the batch size) and accumulate;
   * the result equals the whole batch's, dropout included.
   */
  microBatches?: number;
  /**
   * Index of this batch's first sample in the global batch (a worker's share of it).
   * Dropout masks are keyed by the sample's index in the global batch, so how the global
   * batch is split, among micro-batches or workers, does not change them.
   */
  firstSample?: number;
  /**
   * The length dropout counts each sample's positions over, at least the batch's: a worker
   * pads each piece of a step to the piece's longest record and passes the step's longest,
   * so every sample draws the mask it would in one batch of the whole step.
   */
  maskLength?: number;
  /**
   * What the loss sum is divided by before differentiating: by default this batch's target
   * count (the gradients of the mean loss). A worker passes 1 to get gradients of the sum,
   * which add up across workers and are divided by the global count after the all-reduce.
   */
  normalizer?: number;
}

export interface StepResult {
  /** Mean cross-entropy over all target positions of the batch. */
  loss: number;
  /** Cross-entropy summed over the target positions, and how many argmaxes were right. */
  lossSum: number;
  correct: number;
  accuracy: number;
  targets: number;
  /** One gradient per trainable weight (of the loss sum over `normalizer`), in `weights` order; the caller disposes them. */
  grads: tf.Tensor[];
}

export interface Evaluation {
  loss: number;
  accuracy: number;
  targets: number;
}

/**
 * Loss, metrics and gradients of the pretraining objective for one batch, without
 * applying them. Logits are computed only at target positions (about 15% of tokens
 * for MLM), as Google's BERT does: the vocabulary projection dominates otherwise.
 */
export class PretrainingObjective {
  readonly weights: NamedWeight[];
  private readonly executor: GraphExecutor;
  private readonly outputEmbedding: tfl.layers.Layer;
  private readonly outputBias: tfl.layers.Layer;

  constructor(readonly model: tfl.LayersModel) {
    const names = new Set(model.layers.map((l) => l.name));
    for (const required of [LAYER.mlmHidden, LAYER.tokenEmbedding, LAYER.mlmBias]) {
      if (!names.has(required)) throw new Error(`model ${model.name} has no layer ${required}; build it with the MLM head`);
    }
    this.executor = new GraphExecutor(model);
    this.outputEmbedding = model.getLayer(LAYER.tokenEmbedding);
    this.outputBias = model.getLayer(LAYER.mlmBias);
    this.weights = trainableWeights(model);
  }

  compute(batch: Batch, options: StepOptions = {}): StepResult {
    const total = countTargets(batch);
    if (total === 0) throw new TrainingError('a batch has no target positions (all its targets are 0), so there is nothing to learn from: check that the data has masked or target tokens');
    const parts = options.microBatches ?? 1;
    if (!Number.isInteger(parts) || parts < 1 || parts > batch.batchSize) {
      throw new RangeError(`micro-batches must be an integer from 1 to the batch size (${batch.batchSize}), got ${parts}`);
    }
    const normalizer = options.normalizer ?? total;
    const variables = this.weights.map((w) => w.variable);
    const { grads, lossSum, correct } = accumulateGradients(batch, parts, normalizer, variables, (micro, n, run) => this.lossOf(micro, n, run), options);
    return { loss: lossSum / total, lossSum, correct, accuracy: correct / total, targets: total, grads };
  }

  /** Loss and accuracy with dropout off and no gradients. */
  evaluate(batch: Batch): Evaluation {
    const total = countTargets(batch);
    if (total === 0) return { loss: NaN, accuracy: NaN, targets: 0 };
    const [loss, correct] = tf.tidy(() => {
      const r = this.lossOf(batch, total, { training: false });
      return [r.loss, r.correct];
    });
    const result = { loss: loss!.dataSync()[0]!, accuracy: correct!.dataSync()[0]! / total, targets: total };
    tf.dispose([loss!, correct!]);
    return result;
  }

  /** Sum of the cross-entropy over the batch's targets divided by `normalizer`, and the count of correct argmaxes. */
  private lossOf(
    batch: Batch,
    normalizer: number,
    run: MicroBatchRun,
  ): { loss: tf.Tensor; correct: tf.Tensor } {
    const shape: [number, number] = [batch.batchSize, batch.length];
    const tokens = tf.tensor2d(batch.tokenIds, shape, 'int32');
    const segments = tf.tensor2d(batch.segmentIds, shape, 'int32');
    const [hidden] = this.executor.run([tokens, segments], [LAYER.mlmHidden], run);
    const width = hidden!.shape[hidden!.shape.length - 1]!;
    const positions: number[] = [];
    const labels: number[] = [];
    batch.targets.forEach((t, i) => {
      if (t !== 0) {
        positions.push(i);
        labels.push(t);
      }
    });
    const labelTensor = tf.tensor1d(labels, 'int32');
    const rows = tf.gather(reshape(hidden!, [batch.batchSize * batch.length, width]), tf.tensor1d(positions, 'int32'));
    const logits = this.outputBias.call(this.outputEmbedding.call(rows, {}), {}) as tf.Tensor;
    const { lossSum, correct } = sparseSoftmaxCrossEntropy(logits, labelTensor);
    const loss = tf.div(lossSum, normalizer);
    return { loss, correct };
  }
}
