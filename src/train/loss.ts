import * as tf from '@tensorflow/tfjs-core';
import { FUSED_KERNEL, hasFusedKernel, runFusedKernel, runFusedKernelOutputs } from '../backend/fused-kernels.js';
import { customOp } from '../model/layers/ops.js';

/** Reported losses stop at -log(1e-30) ~ 69 where a probability underflows; gradients are exact. */
const SMALLEST_PROBABILITY = 1e-30;

/**
 * Softmax cross-entropy of logits [T,V] against integer labels [T], per row, with the
 * gradient softmax - onehot from the kept probabilities. Built on the Softmax kernel,
 * which is XNNPACK on wasm (8x faster than exp over [T,V]): with a 21k vocabulary this
 * op is a large share of an MLM step.
 */
const rowCrossEntropyOps = customOp(([logits, labels], save) => {
  const [rows, vocab] = logits!.shape as [number, number];
  const probs = tf.softmax(logits!, -1);
  save([probs, labels!]);
  const flatIndex = tf.add(tf.mul(tf.range(0, rows, 1, 'int32'), tf.scalar(vocab, 'int32')), labels!);
  const picked = tf.gather(tf.reshape(probs, [rows * vocab]), flatIndex);
  return {
    value: tf.neg(tf.log(tf.maximum(picked, SMALLEST_PROBABILITY))),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [p, l] = saved as [tf.Tensor, tf.Tensor];
      // oneHot straight to float32 gives wrong values on tfjs-backend-wasm 4.22: build int32, then cast
      const target = tf.cast(tf.oneHot(l, vocab), 'float32');
      return [tf.mul(tf.sub(p, target), tf.reshape(dy, [rows, 1])), tf.zerosLike(l)];
    },
  };
});

/** The same on a backend's fused kernels: the gradient is one pass over the kept probabilities. */
const rowCrossEntropyFused = customOp(([logits, labels], save) => {
  const [loss, probs] = runFusedKernelOutputs(FUSED_KERNEL.softmaxCrossEntropy, { logits: logits!, labels: labels! }) as [tf.Tensor, tf.Tensor];
  save([probs, labels!]);
  probs.dispose();
  return {
    value: loss,
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [p, l] = saved as [tf.Tensor, tf.Tensor];
      return [runFusedKernel(FUSED_KERNEL.softmaxCrossEntropyGrad, { probs: p, labels: l, dy }), tf.zerosLike(l)];
    },
  };
});

function rowCrossEntropy(logits: tf.Tensor, labels: tf.Tensor): tf.Tensor {
  const fused = hasFusedKernel(FUSED_KERNEL.softmaxCrossEntropy) && logits.dtype === 'float32' && logits.rank === 2;
  return (fused ? rowCrossEntropyFused : rowCrossEntropyOps)(logits, labels);
}

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
