import * as tfl from '@tensorflow/tfjs-layers';
import type { BertConfig } from './config.js';
import {
  AttentionMask,
  type AttentionKind,
  BiasAdd,
  FeedForward,
  LayerNorm,
  MultiHeadSelfAttention,
  PositionEmbedding,
  Projection,
  Residual,
  SeededDropout,
  TokenEmbedding,
} from './layers/index.js';
import { hashString } from './layers/base.js';

/** encoder: BERT/RoBERTa (MLM); unilm: seq2seq over one encoder; lm: left-to-right. */
export type Application = 'encoder' | 'unilm' | 'lm';
export const APPLICATIONS: readonly Application[] = ['encoder', 'unilm', 'lm'];

const MASK_KIND: Record<Application, AttentionKind> = { encoder: 'padding', unilm: 'unilm', lm: 'causal' };

/** Layer names the rest of the system addresses (checkpoints, training, adversarial training). */
export const LAYER = {
  tokenInput: 'Input-Token',
  segmentInput: 'Input-Segment',
  tokenEmbedding: 'Embedding-Token',
  mlmHidden: 'MLM-Norm',
  mlmBias: 'MLM-Bias',
} as const;

export interface BuildOptions {
  application?: Application;
  /** Append the MLM head (dense + norm + tied output embedding + bias + softmax). Default true. */
  withMlm?: boolean;
  name?: string;
  /** Seed of the weight initialisers: the same seed builds the same weights. Unseeded when absent. */
  seed?: number;
}

type Sym = tfl.SymbolicTensor;

function applyOne(layer: tfl.layers.Layer, input: Sym | Sym[]): Sym {
  return layer.apply(input) as Sym;
}

/**
 * Builds the Transformer as a tf.LayersModel from a bert_config: inputs [token ids,
 * segment ids] (id 0 is padding), output MLM probabilities [B,S,vocab] or, without the
 * head, the last hidden states [B,S,H].
 */
export function buildTransformer(config: BertConfig, options: BuildOptions = {}): tfl.LayersModel {
  const application = options.application ?? 'encoder';
  if (!APPLICATIONS.includes(application)) {
    throw new Error(`unknown application "${String(application)}"; use one of ${APPLICATIONS.join(', ')}`);
  }
  const hidden = config.hidden_size;
  // every layer's initialiser args: the range, and a per-layer seed when the build is seeded
  const init = (layer: string): { initializerRange: number; seed?: number } =>
    options.seed === undefined
      ? { initializerRange: config.initializer_range }
      : { initializerRange: config.initializer_range, seed: (Math.imul(options.seed >>> 0, 0x01000193) ^ hashString(layer)) >>> 0 };
  const tokens = tfl.input({ shape: [null], dtype: 'int32', name: LAYER.tokenInput });
  const segments = tfl.input({ shape: [null], dtype: 'int32', name: LAYER.segmentInput });

  const tokenEmbedding = new TokenEmbedding({
    name: LAYER.tokenEmbedding,
    inputDim: config.vocab_size,
    outputDim: hidden,
    ...init(LAYER.tokenEmbedding),
  });
  let x = applyOne(tokenEmbedding, tokens);
  const s = applyOne(
    new TokenEmbedding({ name: 'Embedding-Segment', inputDim: config.type_vocab_size, outputDim: hidden, ...init('Embedding-Segment') }),
    segments,
  );
  x = applyOne(new Residual({ name: 'Embedding-Token-Segment' }), [x, s]);
  x = applyOne(
    new PositionEmbedding({ name: 'Embedding-Position', maxLength: config.max_position_embeddings, outputDim: hidden, ...init('Embedding-Position') }),
    x,
  );
  x = applyOne(new LayerNorm({ name: 'Embedding-Norm' }), x);
  x = applyOne(new SeededDropout({ name: 'Embedding-Dropout', rate: config.hidden_dropout_prob }), x);
  const mask = applyOne(new AttentionMask({ name: 'Attention-Mask', kind: MASK_KIND[application] }), [tokens, segments]);

  for (let i = 0; i < config.num_hidden_layers; i++) {
    const prefix = `Transformer-${i}`;
    const attention = `${prefix}-MultiHeadSelfAttention`;
    let y = applyOne(
      new MultiHeadSelfAttention({
        name: attention,
        heads: config.num_attention_heads,
        headSize: hidden / config.num_attention_heads,
        attentionDropout: config.attention_probs_dropout_prob,
        ...init(attention),
      }),
      [x, mask],
    );
    y = applyOne(new SeededDropout({ name: `${attention}-Dropout`, rate: config.hidden_dropout_prob }), y);
    x = applyOne(new Residual({ name: `${attention}-Add` }), [x, y]);
    x = applyOne(new LayerNorm({ name: `${attention}-Norm` }), x);

    const feedForward = `${prefix}-FeedForward`;
    y = applyOne(
      new FeedForward({ name: feedForward, units: config.intermediate_size, activation: config.hidden_act, ...init(feedForward) }),
      x,
    );
    y = applyOne(new SeededDropout({ name: `${feedForward}-Dropout`, rate: config.hidden_dropout_prob }), y);
    x = applyOne(new Residual({ name: `${feedForward}-Add` }), [x, y]);
    x = applyOne(new LayerNorm({ name: `${feedForward}-Norm` }), x);
  }

  if (options.withMlm ?? true) {
    x = applyOne(new Projection({ name: 'MLM-Dense', units: hidden, activation: config.hidden_act, ...init('MLM-Dense') }), x);
    x = applyOne(new LayerNorm({ name: LAYER.mlmHidden }), x);
    x = applyOne(tokenEmbedding, x);
    x = applyOne(new BiasAdd({ name: LAYER.mlmBias }), x);
    x = applyOne(tfl.layers.activation({ name: 'MLM-Activation', activation: 'softmax' }), x);
  }
  return tfl.model({ inputs: [tokens, segments], outputs: x, name: options.name ?? `bert-${application}` });
}

/**
 * Disposes the model and all its weights. tfjs-layers counts one reference per
 * application of a layer, so the tied token embedding (applied twice) would survive a
 * plain model.dispose().
 */
export function disposeTransformer(model: tfl.LayersModel): void {
  model.dispose();
  for (const layer of model.layers) {
    for (let extra = layer.inboundNodes.length - 1; extra > 0; extra--) layer.dispose();
  }
}
