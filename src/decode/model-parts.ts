/**
 * The one place where decoding reaches into a built Transformer (`buildTransformer`): its
 * layers by their stable names, and the weights of the two layers whose math the
 * incremental forward must redo (attention, which reads cached keys and values, and the
 * position table, read at one position). Every other step calls the model's own layer.
 */
import type * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { type Application, LAYER } from '../model/build.js';
import { AttentionMask, MultiHeadSelfAttention, TokenEmbedding, type AttentionKind } from '../model/layers/index.js';
import { trainableWeights } from '../model/weights.js';
import { ModelPartsError } from './errors.js';

/** The applications that generate text: seq2seq over one encoder, and left-to-right. */
export type GenerativeApplication = Exclude<Application, 'encoder'>;

export { ModelPartsError };

/** A layer called as a function of one tensor (its own math, inference mode). */
export type LayerFn = (x: tf.Tensor) => tf.Tensor;

export interface Dense {
  readonly kernel: tf.Tensor;
  readonly bias: tf.Tensor;
}

export interface BlockParts {
  readonly query: Dense;
  readonly key: Dense;
  readonly value: Dense;
  readonly output: Dense;
  readonly attentionNorm: LayerFn;
  readonly feedForward: LayerFn;
  readonly feedForwardNorm: LayerFn;
}

export interface TransformerParts {
  readonly application: GenerativeApplication;
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly heads: number;
  readonly headSize: number;
  readonly maxPositions: number;
  /** Token ids [..] -> vectors [.., H]. */
  readonly tokenEmbedding: LayerFn;
  readonly segmentEmbedding: LayerFn;
  /** [max positions, H]. */
  readonly positionTable: tf.Tensor2D;
  readonly embeddingNorm: LayerFn;
  readonly blocks: readonly BlockParts[];
  /** Hidden states [rows, H] -> logits [rows, vocab]: MLM-Dense, MLM-Norm, the tied embedding, MLM-Bias. */
  readonly mlmLogits: LayerFn;
  /** The model's own attention mask layer: [token ids, segment ids] -> additive bias. */
  readonly attentionMask: (tokens: tf.Tensor, segments: tf.Tensor) => tf.Tensor;
}

const APPLICATION_OF: Record<AttentionKind, Application> = { padding: 'encoder', unilm: 'unilm', causal: 'lm' };

function layer(model: tfl.LayersModel, name: string): tfl.layers.Layer {
  const found = model.layers.find((l) => l.name === name);
  if (!found) throw new ModelPartsError(`the model ${model.name} has no layer ${name}: it is not a model of buildTransformer (coordinator export)`);
  return found;
}

function fn(l: tfl.layers.Layer): LayerFn {
  return (x) => l.call(x, {}) as tf.Tensor;
}

/** The application a model was built for, from its attention mask layer. */
export function modelApplication(model: tfl.LayersModel): Application {
  const mask = layer(model, 'Attention-Mask');
  if (!(mask instanceof AttentionMask)) throw new ModelPartsError(`the layer Attention-Mask of ${model.name} is a ${mask.getClassName()}, not an AttentionMask`);
  return APPLICATION_OF[mask.kind];
}

/** The rows of the model's token embedding (its vocabulary size). */
export function modelVocabSize(model: tfl.LayersModel): number {
  const embedding = layer(model, LAYER.tokenEmbedding);
  if (!(embedding instanceof TokenEmbedding)) throw new ModelPartsError(`the layer ${LAYER.tokenEmbedding} of ${model.name} is not a TokenEmbedding`);
  return embedding.inputDim;
}

/** The parts of a `unilm` or `lm` model with its MLM head; refuses an encoder or a model without the head. */
export function transformerParts(model: tfl.LayersModel): TransformerParts {
  const application = modelApplication(model);
  if (application === 'encoder') {
    throw new ModelPartsError(`the model ${model.name} is an encoder (bidirectional attention over the whole input): it cannot generate; use a unilm or lm model`);
  }
  const weights = new Map(trainableWeights(model).map((w) => [w.name, w.variable as tf.Tensor]));
  const weight = (name: string): tf.Tensor => {
    const w = weights.get(name);
    if (!w) throw new ModelPartsError(`the model ${model.name} has no weight ${name}`);
    return w;
  };
  const dense = (prefix: string): Dense => ({ kernel: weight(`${prefix}/kernel`), bias: weight(`${prefix}/bias`) });
  const blocks: BlockParts[] = [];
  let heads = 0;
  let headSize = 0;
  for (let i = 0; model.layers.some((l) => l.name === `Transformer-${i}-MultiHeadSelfAttention`); i++) {
    const name = `Transformer-${i}-MultiHeadSelfAttention`;
    const attention = layer(model, name);
    if (!(attention instanceof MultiHeadSelfAttention)) throw new ModelPartsError(`the layer ${name} of ${model.name} is not a MultiHeadSelfAttention`);
    heads = attention.heads;
    headSize = attention.headSize;
    blocks.push({
      query: dense(`${name}/query`),
      key: dense(`${name}/key`),
      value: dense(`${name}/value`),
      output: dense(`${name}/output`),
      attentionNorm: fn(layer(model, `${name}-Norm`)),
      feedForward: fn(layer(model, `Transformer-${i}-FeedForward`)),
      feedForwardNorm: fn(layer(model, `Transformer-${i}-FeedForward-Norm`)),
    });
  }
  if (blocks.length === 0) throw new ModelPartsError(`the model ${model.name} has no Transformer-0-MultiHeadSelfAttention layer`);
  const positionTable = weight('Embedding-Position/embeddings') as tf.Tensor2D;
  const tokenEmbedding = fn(layer(model, LAYER.tokenEmbedding));
  const [mlmDense, mlmNorm, mlmBias] = ['MLM-Dense', LAYER.mlmHidden, LAYER.mlmBias].map((n) => {
    if (!model.layers.some((l) => l.name === n)) throw new ModelPartsError(`the model ${model.name} has no MLM head (layer ${n}): build it with withMlm`);
    return fn(layer(model, n));
  }) as [LayerFn, LayerFn, LayerFn];
  const mask = layer(model, 'Attention-Mask');
  return {
    application,
    vocabSize: modelVocabSize(model),
    hiddenSize: positionTable.shape[1],
    heads,
    headSize,
    maxPositions: positionTable.shape[0],
    tokenEmbedding,
    segmentEmbedding: fn(layer(model, 'Embedding-Segment')),
    positionTable,
    embeddingNorm: fn(layer(model, 'Embedding-Norm')),
    blocks,
    mlmLogits: (x) => mlmBias(tokenEmbedding(mlmNorm(mlmDense(x)))),
    attentionMask: (tokens, segments) => mask.call([tokens, segments], {}) as tf.Tensor,
  };
}
