import * as tf from '@tensorflow/tfjs-core';
import { customOp } from '../model/layers/base.js';

/**
 * Softmax cross-entropy of logits [T,V] against integer labels [T], per row. One exp
 * over [T,V] in the forward pass and none in the backward pass (the probabilities are
 * kept): with a 21k vocabulary this op is a large share of an MLM step.
 */
const rowCrossEntropy = customOp(([logits, labels], save) => {
  const [rows, vocab] = logits!.shape as [number, number];
  const max = tf.max(logits!, -1, true);
  const exps = tf.exp(tf.sub(logits!, max));
  const sums = tf.sum(exps, -1, true);
  const probs = tf.div(exps, sums);
  save([probs, labels!]);
  const flatIndex = tf.add(tf.mul(tf.range(0, rows, 1, 'int32'), tf.scalar(vocab, 'int32')), labels!);
  const picked = tf.gather(tf.reshape(logits!, [rows * vocab]), flatIndex);
  const logZ = tf.add(tf.reshape(max, [rows]), tf.log(tf.reshape(sums, [rows])));
  return {
    value: tf.sub(logZ, picked),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [p, l] = saved as [tf.Tensor, tf.Tensor];
      // oneHot straight to float32 gives wrong values on tfjs-backend-wasm 4.22: build int32, then cast
      const target = tf.cast(tf.oneHot(l, vocab), 'float32');
      return [tf.mul(tf.sub(p, target), tf.reshape(dy, [rows, 1])), tf.zerosLike(l)];
    },
  };
});

export interface CrossEntropy {
  /** Sum over rows of -log softmax(logits)[label]. */
  lossSum: tf.Tensor;
  /** Rows whose label has the highest logit. */
  correct: tf.Tensor;
}

export function sparseSoftmaxCrossEntropy(logits: tf.Tensor, labels: tf.Tensor): CrossEntropy {
  if (labels.dtype !== 'int32') throw new Error('labels must be int32');
  const perRow = rowCrossEntropy(logits, labels);
  const best = tf.argMax(logits, -1);
  return { lossSum: tf.sum(perRow), correct: tf.sum(tf.cast(tf.equal(best, labels), 'float32')) };
}
