import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import {
  type ConfigDict,
  type LayerArgs,
  type Shape,
  callKwargs,
  denseLastAxis,
  dropoutIfTraining,
  hashString,
  truncatedNormal,
  initializerConfig,
} from './base.js';
import { addMask, reshape, scale } from './ops.js';

export interface MultiHeadSelfAttentionArgs extends LayerArgs {
  heads: number;
  headSize: number;
  attentionDropout?: number;
  initializerRange?: number;
  /** Seed of the weight initialiser; unseeded when absent. */
  seed?: number;
}

/**
 * Multi-head self-attention. Inputs: [hidden [B,S,H], bias [B,1,S|1,S]]. The 1/sqrt(d)
 * scale is applied to the queries ([B,N,S,d]) rather than to the scores ([B,N,S,S]).
 */
export class MultiHeadSelfAttention extends tfl.layers.Layer {
  static className = 'MultiHeadSelfAttention';
  readonly heads: number;
  readonly headSize: number;
  readonly attentionDropout: number;
  readonly initializerRange: number;
  readonly seed: number | undefined;
  private weightsByName: Record<string, tfl.LayerVariable> = {};

  constructor(args: MultiHeadSelfAttentionArgs) {
    super(args);
    this.heads = args.heads;
    this.headSize = args.headSize;
    this.attentionDropout = args.attentionDropout ?? 0;
    this.initializerRange = args.initializerRange ?? 0.02;
    this.seed = args.seed;
  }

  override build(inputShape: Shape | Shape[]): void {
    const width = (inputShape as Shape[])[0]!.at(-1);
    if (width == null) throw new Error(`${this.name}: the hidden size must be known`);
    const inner = this.heads * this.headSize;
    const zeros = tfl.initializers.zeros();
    for (const [name, inDim, outDim] of [
      ['query', width, inner],
      ['key', width, inner],
      ['value', width, inner],
      ['output', inner, width],
    ] as const) {
      this.weightsByName[`${name}/kernel`] = this.addWeight(`${name}/kernel`, [inDim, outDim], 'float32', truncatedNormal(this.initializerRange, this.seed, `${name}/kernel`));
      this.weightsByName[`${name}/bias`] = this.addWeight(`${name}/bias`, [outDim], 'float32', zeros);
    }
    this.built = true;
  }

  private w(name: string): tf.Tensor {
    return this.weightsByName[name]!.read();
  }

  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: object): tf.Tensor {
    const [x, bias] = inputs as [tf.Tensor, tf.Tensor];
    const [batch, length] = x.shape as [number, number, number];
    const toHeads = (t: tf.Tensor): tf.Tensor =>
      tf.transpose(reshape(t, [batch, length, this.heads, this.headSize]), [0, 2, 1, 3]);
    const q = toHeads(denseLastAxis(x, this.w('query/kernel'), this.w('query/bias')));
    const k = toHeads(denseLastAxis(x, this.w('key/kernel'), this.w('key/bias')));
    const v = toHeads(denseLastAxis(x, this.w('value/kernel'), this.w('value/bias')));
    const scores = addMask(tf.matMul(scale(q, 1 / Math.sqrt(this.headSize)), k, false, true), bias);
    let probs = tf.softmax(scores, -1);
    // [batch, heads, query, key]: both position axes are counted as sequences
    probs = dropoutIfTraining(probs, this.attentionDropout, callKwargs(kwargs), hashString(this.name), [2, 3]);
    const context = reshape(tf.transpose(tf.matMul(probs, v), [0, 2, 1, 3]), [
      batch,
      length,
      this.heads * this.headSize,
    ]);
    const out = denseLastAxis(context, this.w('output/kernel'), this.w('output/bias'));
    return out;
  }

  override computeOutputShape(inputShape: Shape | Shape[]): Shape {
    return (inputShape as Shape[])[0]!;
  }

  override getConfig(): ConfigDict {
    return {
      ...super.getConfig(),
      heads: this.heads,
      headSize: this.headSize,
      attentionDropout: this.attentionDropout,
      ...initializerConfig(this.initializerRange, this.seed),
    };
  }
}
tf.serialization.registerClass(MultiHeadSelfAttention);
