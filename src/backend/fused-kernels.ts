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
} as const;

export type FusedKernelName = (typeof FUSED_KERNEL)[keyof typeof FUSED_KERNEL];

/** Whether the active backend has this fused kernel. */
export function hasFusedKernel(name: FusedKernelName): boolean {
  return tf.getKernel(name, tf.getBackend()) !== undefined;
}

/** Runs a fused kernel on the active backend (check `hasFusedKernel` first). */
export function runFusedKernel(name: FusedKernelName, inputs: Record<string, tf.Tensor>): tf.Tensor {
  return tf.engine().runKernel(name, inputs as tf.NamedTensorMap, {}) as tf.Tensor;
}
