import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { type Shape, single, singleShape } from './base.js';

/** Hidden states [B,S,H] -> the first position's vector [B,H] (the `[CLS]` token). */
export class FirstToken extends tfl.layers.Layer {
  static className = 'FirstToken';

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    const x = single(inputs);
    const [batch, , width] = x.shape as [number, number, number];
    return tf.reshape(tf.slice(x, [0, 0, 0], [batch, 1, width]), [batch, width]);
  }

  override computeOutputShape(inputShape: Shape | Shape[]): Shape {
    const shape = singleShape(inputShape);
    return [shape[0]!, shape[shape.length - 1]!];
  }
}
tf.serialization.registerClass(FirstToken);
