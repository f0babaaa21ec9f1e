/**
 * Gradients of a loss summed over micro-batches: the loop the pretraining and the
 * classification objectives share. Each micro-batch is the contiguous slice
 * [p*B/parts, (p+1)*B/parts) of the batch, and dropout is keyed by the sample's place in
 * the whole batch (`firstSample` + its offset), so the split changes nothing but memory.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type Batch, countTargets, sliceBatch } from '../batch.js';
import { leanGradients } from './lean-gradients.js';

export interface MicroBatchRun {
  readonly training: boolean;
  readonly dropoutSeed?: number;
  readonly firstSample?: number;
  readonly maskLength?: number;
  readonly recompute?: boolean;
}

/** A micro-batch's loss (already divided by `normalizer`) and its count of correct predictions. */
export type MicroBatchLoss = (micro: Batch, normalizer: number, run: MicroBatchRun) => { loss: tf.Tensor; correct: tf.Tensor };

export interface AccumulatedGradients {
  /** One per variable, summed over the micro-batches (zeros where a variable got none). */
  readonly grads: tf.Tensor[];
  /** The loss sum (the losses times `normalizer`) and the correct predictions, over the batch. */
  readonly lossSum: number;
  readonly correct: number;
}

export function accumulateGradients(
  batch: Batch,
  parts: number,
  normalizer: number,
  variables: readonly tf.Variable[],
  lossOf: MicroBatchLoss,
  options: { dropoutSeed?: number; firstSample?: number; maskLength?: number; recompute?: boolean },
): AccumulatedGradients {
  let grads: tf.Tensor[] | undefined;
  let lossSum = 0;
  let correct = 0;
  for (let p = 0; p < parts; p++) {
    const start = Math.floor((p * batch.batchSize) / parts);
    const micro = sliceBatch(batch, start, Math.floor(((p + 1) * batch.batchSize) / parts));
    if (countTargets(micro) === 0) continue;
    let hits: tf.Tensor | undefined;
    const seed = options.dropoutSeed;
    const firstSample = (options.firstSample ?? 0) + start;
    const { value, grads: microGrads } = leanGradients(() => {
      const { loss, correct: c } = lossOf(micro, normalizer, { training: seed !== undefined, dropoutSeed: seed, firstSample, maskLength: options.maskLength, recompute: options.recompute });
      hits = tf.keep(c);
      return loss;
    }, [...variables]);
    lossSum += value.dataSync()[0]! * normalizer;
    correct += hits!.dataSync()[0]!;
    value.dispose();
    hits!.dispose();
    const filled = microGrads.map((g, i) => g ?? tf.zerosLike(variables[i]!));
    if (!grads) grads = filled;
    else {
      const summed = grads.map((g, i) => tf.add(g, filled[i]!));
      tf.dispose([...grads, ...filled]);
      grads = summed;
    }
  }
  return { grads: grads!, lossSum, correct };
}
