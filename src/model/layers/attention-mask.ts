import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { type ConfigDict, type LayerArgs, type Shape } from './base.js';

/** Who may attend to whom: `padding` (bidirectional), `unilm` (seq2seq), `causal` (LM). */
export type AttentionKind = 'padding' | 'unilm' | 'causal';
export const ATTENTION_KINDS: readonly AttentionKind[] = ['padding', 'unilm', 'causal'];

/** Added to masked attention scores; large enough that exp() is exactly 0 in float32. */
export const MASKED_SCORE = -1e9;

export interface AttentionMaskArgs extends LayerArgs {
  kind: AttentionKind;
}

/**
 * Builds the additive attention bias [batch, 1, query, key] from token ids (id 0 is
 * padding) and segment ids. UniLM: position i sees j iff cumsum(seg)[j] <= cumsum(seg)[i],
 * so the source is bidirectional and the target left-to-right.
 */
export class AttentionMask extends tfl.layers.Layer {
  static className = 'AttentionMask';
  readonly kind: AttentionKind;

  constructor(args: AttentionMaskArgs) {
    super(args);
    if (!ATTENTION_KINDS.includes(args.kind)) {
      throw new Error(`AttentionMask: unknown kind "${String(args.kind)}"; use ${ATTENTION_KINDS.join(', ')}`);
    }
    this.kind = args.kind;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    const [tokenIds, segmentIds] = inputs as tf.Tensor[];
    const [batch, length] = tokenIds!.shape as [number, number];
    const keyValid = tf.cast(tf.notEqual(tokenIds!, 0), 'float32');
    let allowed: tf.Tensor = tf.reshape(keyValid, [batch, 1, 1, length]);
    if (this.kind === 'unilm') {
      const rank = tf.cumsum(tf.cast(segmentIds!, 'float32'), 1);
      const sees = tf.lessEqual(tf.reshape(rank, [batch, 1, 1, length]), tf.reshape(rank, [batch, 1, length, 1]));
      allowed = tf.mul(allowed, tf.cast(sees, 'float32'));
    } else if (this.kind === 'causal') {
      const lower = tf.linalg.bandPart(tf.ones([length, length]), -1, 0);
      allowed = tf.mul(allowed, tf.reshape(lower, [1, 1, length, length]));
    }
    return tf.mul(tf.sub(1, allowed), MASKED_SCORE);
  }

  override computeOutputShape(inputShape: Shape | Shape[]): Shape {
    const [batch, length] = (inputShape as Shape[])[0]!;
    return this.kind === 'padding' ? [batch!, 1, 1, length!] : [batch!, 1, length!, length!];
  }

  override getConfig(): ConfigDict {
    return { ...super.getConfig(), kind: this.kind };
  }
}
tf.serialization.registerClass(AttentionMask);
