import * as tf from '@tensorflow/tfjs-core';

export interface CustomOpResult {
  value: tf.Tensor;
  gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[];
}

/** tf.customGrad with the saver split from the tensor inputs, typed for our use. */
export function customOp(
  f: (inputs: tf.Tensor[], save: tf.GradSaveFunc) => CustomOpResult,
): (...inputs: tf.Tensor[]) => tf.Tensor {
  const op = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    return f(args.slice(0, -1) as tf.Tensor[], save);
  });
  return (...inputs: tf.Tensor[]) => op(...inputs);
}

// tfjs's reshape and add save their inputs for backprop although their gradients need
// only shapes; on a Transformer that keeps several dead activations per layer alive.
// These variants save nothing.

/** tf.reshape that keeps nothing for backprop. */
export function reshape(x: tf.Tensor, shape: number[]): tf.Tensor {
  return customOp(([input]) => {
    const original = input!.shape;
    return { value: tf.reshape(input!, shape), gradFunc: (dy: tf.Tensor) => tf.reshape(dy, original) };
  })(x);
}

/** x + y where y's shape is a suffix of x's (a bias, position vectors); keeps nothing for backprop. */
export function addTrailing(x: tf.Tensor, y: tf.Tensor): tf.Tensor {
  return customOp(([a, b]) => ({
    value: tf.add(a!, b!),
    gradFunc: (dy: tf.Tensor) => [dy, tf.sum(tf.reshape(dy, [-1, ...b!.shape]), 0)],
  }))(x, y);
}

/** x + y for tensors of one shape (residual connections); keeps nothing for backprop. */
export function addSameShape(x: tf.Tensor, y: tf.Tensor): tf.Tensor {
  return customOp(([a, b]) => ({ value: tf.add(a!, b!), gradFunc: (dy: tf.Tensor) => [dy, dy] }))(x, y);
}

/** scores + bias for an additive attention mask, which never needs a gradient. */
export function addMask(scores: tf.Tensor, bias: tf.Tensor): tf.Tensor {
  return customOp(([s, b]) => ({ value: tf.add(s!, b!), gradFunc: (dy: tf.Tensor) => [dy, tf.zerosLike(b!)] }))(scores, bias);
}

/** x * factor for a constant; keeps nothing for backprop. */
export function scale(x: tf.Tensor, factor: number): tf.Tensor {
  return customOp(([input]) => ({ value: tf.mul(input!, factor), gradFunc: (dy: tf.Tensor) => tf.mul(dy, factor) }))(x);
}
