/**
 * The classification loss and its gradients for the Trainer, with optional FGM adversarial
 * training on the token embedding (Miyato et al.; bert4keras's `adversarial_training`).
 *
 * A batch is the trainer's `Batch`: each sample's target at its first position is its label
 * id + 1, every other target 0, so micro-batches and the trainer's counts work unchanged.
 *
 * FGM, per whole batch (not per micro-batch), so that micro-batches change nothing:
 * 1. the gradients g of the mean loss w.r.t. every weight, accumulated over the micro-batches;
 * 2. r = epsilon * g_emb / ||g_emb|| for the token embedding matrix (`Embedding-Token`);
 *    nothing more is done when ||g_emb|| = 0;
 * 3. the embedding becomes E + r (a fresh tensor; a reference to E's own values is kept);
 * 4. the gradients of the loss on the perturbed model, over the same micro-batches with the
 *    same dropout masks, are added to g;
 * 5. the embedding is given back E's very values (bit for bit), even when step 4 throws.
 * The optimizer then takes one step with the sum. Recompute replays blocks inside steps 1
 * and 4 alike, with the embedding of that step.
 */
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { type Batch, countTargets } from '../batch.js';
import { LAYER } from '../model/build.js';
import { trainableWeights, type NamedWeight } from '../model/weights.js';
import { GraphExecutor } from '../train/graph-executor.js';
import { type AccumulatedGradients, accumulateGradients } from '../train/accumulate.js';
import { sparseSoftmaxCrossEntropy } from '../train/loss.js';
import { type StepOptions, type StepResult, TrainingError } from '../train/step.js';
import type { TrainingObjective } from '../train/trainer.js';
import { CLASSIFIER_LAYER } from './model.js';

export interface AdversarialOptions {
  /** Norm of the perturbation of the token embedding matrix. */
  epsilon: number;
  /** Called while the embedding is perturbed (tests read it there). */
  onPerturbed?: (embedding: tf.Variable) => void;
}

/** FGM's perturbation of a weight from its gradient: epsilon * g / ||g||, or undefined when ||g|| = 0. */
export function fgmPerturbation(grad: tf.Tensor, epsilon: number): tf.Tensor | undefined {
  const norm = tf.tidy(() => tf.norm(grad).dataSync()[0]!);
  if (!(norm > 0) || !Number.isFinite(norm)) return undefined;
  return tf.tidy(() => tf.mul(grad, epsilon / norm));
}

export interface ClassificationStepResult extends StepResult {
  /** Mean loss on the perturbed embedding (FGM only; NaN without it or when nothing was perturbed). */
  adversarialLoss: number;
}

/** Mutable: the FGM pass adds its gradients into `grads`. */
type Accumulated = { -readonly [K in keyof AccumulatedGradients]: AccumulatedGradients[K] };

export class ClassificationObjective implements TrainingObjective {
  readonly weights: NamedWeight[];
  /** Index of the token embedding matrix in `weights`. */
  readonly embeddingIndex: number;
  /** The adversarial loss of the latest `compute` (NaN without FGM), for reports. */
  lastAdversarialLoss = NaN;
  private readonly executor: GraphExecutor;

  constructor(
    readonly model: tfl.LayersModel,
    readonly adversarial?: AdversarialOptions,
  ) {
    this.executor = new GraphExecutor(model);
    this.weights = trainableWeights(model);
    const table = model.getLayer(LAYER.tokenEmbedding).trainableWeights[0]?.read();
    this.embeddingIndex = this.weights.findIndex((w) => w.variable === table);
    if (this.embeddingIndex < 0) throw new Error(`model ${model.name}: the ${LAYER.tokenEmbedding} matrix is not among the trainable weights`);
    if (adversarial && !(adversarial.epsilon > 0)) throw new RangeError(`FGM epsilon must be > 0, got ${adversarial.epsilon}`);
  }

  compute(batch: Batch, options: StepOptions = {}): ClassificationStepResult {
    const total = countTargets(batch);
    if (total === 0) throw new TrainingError('a classification batch has no labelled samples');
    const parts = options.microBatches ?? 1;
    if (!Number.isInteger(parts) || parts < 1 || parts > batch.batchSize) {
      throw new RangeError(`micro-batches must be an integer from 1 to the batch size (${batch.batchSize}), got ${parts}`);
    }
    const normalizer = options.normalizer ?? total;
    const clean = this.accumulate(batch, parts, normalizer, options);
    let adversarialLoss = NaN;
    if (this.adversarial) {
      const variable = this.weights[this.embeddingIndex]!.variable;
      const r = fgmPerturbation(clean.grads[this.embeddingIndex]!, this.adversarial.epsilon);
      if (r) {
        // shares the embedding's values: restoring assigns them back, so they stay bit for bit
        const original = tf.clone(variable);
        const perturbed = tf.add(original, r);
        r.dispose();
        let adversarial: Accumulated | undefined;
        try {
          variable.assign(perturbed);
          perturbed.dispose();
          this.adversarial.onPerturbed?.(variable);
          adversarial = this.accumulate(batch, parts, normalizer, options);
        } finally {
          variable.assign(original);
          original.dispose();
          if (!perturbed.isDisposed) perturbed.dispose();
        }
        const summed = clean.grads.map((g, i) => tf.add(g, adversarial!.grads[i]!));
        tf.dispose([...clean.grads, ...adversarial.grads]);
        clean.grads = summed;
        adversarialLoss = adversarial.lossSum / total;
      }
    }
    this.lastAdversarialLoss = adversarialLoss;
    return { loss: clean.lossSum / total, lossSum: clean.lossSum, correct: clean.correct, accuracy: clean.correct / total, targets: total, grads: clean.grads, adversarialLoss };
  }

  /** Class probabilities [B, labels] with dropout off. */
  probabilities(batch: Batch): Float32Array {
    return tf.tidy(() => {
      const [probs] = this.executor.run(this.feeds(batch), [CLASSIFIER_LAYER.probabilities], { training: false });
      return probs!.dataSync() as Float32Array;
    });
  }

  private feeds(batch: Batch): tf.Tensor[] {
    const shape: [number, number] = [batch.batchSize, batch.length];
    return [tf.tensor2d(batch.tokenIds, shape, 'int32'), tf.tensor2d(batch.segmentIds, shape, 'int32')];
  }

  /** Gradients of the loss sum over `normalizer`, summed over the micro-batches. */
  private accumulate(batch: Batch, parts: number, normalizer: number, options: StepOptions): Accumulated {
    return accumulateGradients(batch, parts, normalizer, this.weights.map((w) => w.variable), (micro, n, run) => this.lossOf(micro, n, run), options);
  }

  private lossOf(
    batch: Batch,
    normalizer: number,
    run: { training: boolean; dropoutSeed?: number; firstSample?: number; recompute?: boolean },
  ): { loss: tf.Tensor; correct: tf.Tensor } {
    const labels: number[] = [];
    for (let b = 0; b < batch.batchSize; b++) labels.push(batch.targets[b * batch.length]! - 1);
    if (labels.some((l) => l < 0)) throw new TrainingError('a classification batch has a sample without a label');
    const [logits] = this.executor.run(this.feeds(batch), [CLASSIFIER_LAYER.classifier], run);
    const { lossSum, correct } = sparseSoftmaxCrossEntropy(logits!, tf.tensor1d(labels, 'int32'));
    return { loss: tf.div(lossSum, normalizer), correct };
  }
}
