/**
 * A classifier on a pretrained encoder: the base model's layers up to the last Transformer
 * block (its MLM head, if any, left out), then `[CLS]` pooling and a softmax classifier,
 * with stable names:
 *
 *   ... Transformer-{L-1}-FeedForward-Norm -> CLS-Token (first position [B,H])
 *       -> Pooler (dense tanh, H) -> Pooler-Dropout -> Classifier (dense, labels: the logits)
 *       -> Classifier-Activation (softmax): the model's output, the probabilities
 *
 * A base model that has a `Pooler` already (a fine-tuned model, fine-tuned again) keeps it.
 */
import * as tfl from '@tensorflow/tfjs-layers';
import { LAYER } from '../model/build.js';
import { AttentionMask, FirstToken, Projection, SeededDropout } from '../model/layers/index.js';
import { hashString } from '../model/layers/base.js';

export const CLASSIFIER_LAYER = {
  clsToken: 'CLS-Token',
  pooler: 'Pooler',
  poolerDropout: 'Pooler-Dropout',
  /** The logits [B, labels]: the loss reads this layer's output. */
  classifier: 'Classifier',
  probabilities: 'Classifier-Activation',
} as const;

const LAST_NORM = /^Transformer-(\d+)-FeedForward-Norm$/;

export class ClassifierModelError extends Error {
  override name = 'ClassifierModelError';
}

type Sym = tfl.SymbolicTensor;

function findLayer(model: tfl.LayersModel, name: string): tfl.layers.Layer | undefined {
  return model.layers.find((l) => l.name === name);
}

/** The output of the base model's last Transformer block (first node: the encoder pass). */
export function encoderOutput(base: tfl.LayersModel): Sym {
  let last = -1;
  for (const l of base.layers) {
    const m = LAST_NORM.exec(l.name);
    if (m) last = Math.max(last, Number(m[1]));
  }
  for (const required of [LAYER.tokenInput, LAYER.segmentInput, LAYER.tokenEmbedding]) {
    if (!findLayer(base, required)) throw new ClassifierModelError(`model ${base.name} has no layer ${required}: give a model of this project (coordinator export, or --preset)`);
  }
  if (last < 0) throw new ClassifierModelError(`model ${base.name} has no Transformer-<i>-FeedForward-Norm layer: not a Transformer of this project`);
  return base.getLayer(`Transformer-${last}-FeedForward-Norm`).getOutputAt(0) as Sym;
}

/** What the attention mask of the base model does ('padding' for a BERT encoder). */
export function attentionKind(base: tfl.LayersModel): string {
  const mask = base.layers.find((l) => l instanceof AttentionMask) as AttentionMask | undefined;
  return mask?.kind ?? 'padding';
}

export interface ClassifierOptions {
  labels: number;
  /** Seed of the new layers' initial weights; unseeded when absent. */
  seed?: number;
  name?: string;
}

/** The classifier on `base`'s encoder; shares the base's layers (and weights). */
export function buildClassifier(base: tfl.LayersModel, options: ClassifierOptions): tfl.LayersModel {
  if (!Number.isInteger(options.labels) || options.labels < 2) throw new ClassifierModelError(`a classifier needs at least 2 labels, got ${options.labels}`);
  const hidden = encoderOutput(base);
  const width = hidden.shape[hidden.shape.length - 1]!;
  const init = (layer: string): { initializerRange: number; seed?: number } =>
    options.seed === undefined ? { initializerRange: 0.02 } : { initializerRange: 0.02, seed: (Math.imul(options.seed >>> 0, 0x01000193) ^ hashString(layer)) >>> 0 };
  const dropout = findLayer(base, 'Embedding-Dropout');
  const rate = dropout instanceof SeededDropout ? dropout.rate : 0.1;
  let x = new FirstToken({ name: CLASSIFIER_LAYER.clsToken }).apply(hidden) as Sym;
  const existing = findLayer(base, CLASSIFIER_LAYER.pooler);
  const pooler = existing instanceof Projection && existing.units === width
    ? existing
    : new Projection({ name: CLASSIFIER_LAYER.pooler, units: width, activation: 'tanh', ...init(CLASSIFIER_LAYER.pooler) });
  x = pooler.apply(x) as Sym;
  x = new SeededDropout({ name: CLASSIFIER_LAYER.poolerDropout, rate }).apply(x) as Sym;
  x = new Projection({ name: CLASSIFIER_LAYER.classifier, units: options.labels, activation: 'linear', ...init(CLASSIFIER_LAYER.classifier) }).apply(x) as Sym;
  x = tfl.layers.activation({ name: CLASSIFIER_LAYER.probabilities, activation: 'softmax' }).apply(x) as Sym;
  return tfl.model({ inputs: base.inputs, outputs: x, name: options.name ?? 'bert-classifier' });
}

/** Checks that a loaded model is a classifier of this module, with `labels` outputs. */
export function checkClassifier(model: tfl.LayersModel, labels: number, source: string): void {
  for (const name of [CLASSIFIER_LAYER.classifier, CLASSIFIER_LAYER.probabilities, LAYER.tokenInput, LAYER.segmentInput]) {
    if (!findLayer(model, name)) throw new ClassifierModelError(`${source} has no layer ${name}: not a model of pretrain finetune`);
  }
  const units = (model.getLayer(CLASSIFIER_LAYER.classifier) as Projection).units;
  if (units !== labels) throw new ClassifierModelError(`${source}: the classifier has ${units} outputs but labels.json names ${labels} labels`);
}
