import * as tf from '@tensorflow/tfjs-core';

/**
 * Kernels of our own that fuse what would be many tfjs ops. A backend may register
 * them (wasm does, src/backend/wasm-kernels.ts); where one is missing the model falls
 * back to the same math in tfjs ops, so every backend computes the same function.
 */
export const FUSED_KERNEL = {
  /** inputs {x}: x * Phi(x), Phi the standard normal CDF (exact GELU). */
  geluErf: 'GeluErf',
  /** inputs {dy, x}: dy * (Phi(x) + x * phi(x)). */
  geluErfGrad: 'GeluErfGrad',
  /** inputs {x}, attrs DropoutAttrs: x times the mask of `dropoutStream` (also its own gradient). */
  seededDropout: 'SeededDropout',
  /** inputs {x, gamma, beta}, attrs {epsilon}: layer normalisation over the last axis. */
  layerNorm: 'LayerNormalization',
  /** inputs {dy, x, gamma}, attrs {epsilon}: outputs [dx, dGamma, dBeta]. */
  layerNormGrad: 'LayerNormalizationGrad',
  /** inputs {logits [T,V], labels [T] int32}: outputs [loss [T], softmax probabilities [T,V]]. */
  softmaxCrossEntropy: 'SoftmaxCrossEntropy',
  /** inputs {probs, labels, dy [T]}: (probs - onehot(labels)) * dy per row. */
  softmaxCrossEntropyGrad: 'SoftmaxCrossEntropyGrad',
} as const;

export type FusedKernelName = (typeof FUSED_KERNEL)[keyof typeof FUSED_KERNEL];

/** Whether the active backend has this fused kernel. */
export function hasFusedKernel(name: FusedKernelName): boolean {
  return tf.getKernel(name, tf.getBackend()) !== undefined;
}

/** Runs a fused kernel on the active backend (check `hasFusedKernel` first). */
export function runFusedKernel(name: FusedKernelName, inputs: Record<string, tf.Tensor>, attrs: object = {}): tf.Tensor {
  return tf.engine().runKernel(name, inputs as tf.NamedTensorMap, attrs as tf.NamedAttrMap) as tf.Tensor;
}

/** Runs a fused kernel with several outputs. */
export function runFusedKernelOutputs(name: FusedKernelName, inputs: Record<string, tf.Tensor>, attrs: object = {}): tf.Tensor[] {
  return tf.engine().runKernel(name, inputs as tf.NamedTensorMap, attrs as tf.NamedAttrMap) as tf.Tensor[];
}

export interface DropoutAttrs {
  rate: number;
  seed: number;
  salt: number;
  /**
   * Units of the stream before this tensor's first unit: a micro-batch (or a worker's
   * share of a global batch) starting at sample s passes s times the units per sample,
   * so it draws exactly the mask the whole batch draws for those samples.
   */
  offset: number;
}

/**
 * The seeded dropout mask as a counter-based stream: unit i is kept iff
 * splitmix32(state0 + (i+1) * 0x9e3779b9) >= threshold (unsigned), and a kept unit is
 * scaled by `keep`. Every implementation (tfjs ops, wasm SIMD) draws from this; the
 * offset only moves state0, since the counter is linear in the unit index.
 */
export function dropoutStream({ rate, seed, salt, offset }: DropoutAttrs): { state0: number; threshold: number; keep: number } {
  // Math.imul wraps its operands mod 2^32, which is the arithmetic the counter lives in
  const skipped = Math.imul(offset % 4294967296, 0x9e3779b9);
  return {
    state0: (((Math.imul(seed >>> 0, 0x9e3779b1) ^ salt) >>> 0) + skipped) >>> 0,
    threshold: Math.floor(rate * 4294967296),
    keep: Math.fround(1 / (1 - rate)),
  };
}
