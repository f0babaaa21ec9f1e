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
  /**
   * The shape the stream's units are counted over, where it differs from the tensor's (same
   * rank, no axis shorter): a sequence axis counts the step's longest record (CallKwargs.maskLength)
   * whatever the piece is padded to, so a sample draws the same mask in a batch of any length
   * (see `dropoutRuns`). Absent: the tensor's own shape.
   */
  countShape?: number[];
}

/**
 * The tensor, in row-major order, as runs of `length` units that are contiguous in its own
 * shape and in the count shape: run r starts at unit `starts[r]` of the count shape. The
 * runs end at the last axis that is shorter than its count (the axes after it are whole),
 * so a [batch, length, hidden] tensor counted over the longest length is one run per
 * sample, and attention probabilities [batch, heads, length, length] one per row.
 */
export function dropoutRuns(shape: readonly number[], countShape?: readonly number[]): { length: number; starts: Float64Array } {
  const size = shape.reduce((a, b) => a * b, 1);
  if (!countShape) return { length: size, starts: Float64Array.of(0) };
  if (countShape.length !== shape.length || countShape.some((c, i) => !(c >= shape[i]!))) {
    throw new Error(`dropout counts a tensor of shape [${shape.join(', ')}] over [${countShape.join(', ')}]: the count shape must have its rank and no shorter axis`);
  }
  let cut = shape.length - 1;
  while (cut >= 0 && countShape[cut] === shape[cut]) cut--;
  if (cut < 0 || size === 0) return { length: size, starts: Float64Array.of(0) };
  // one run per index of the axes before `cut`; the run is shape[cut] whole trailing blocks
  const length = shape.slice(cut).reduce((a, b) => a * b, 1);
  const block = countShape.slice(cut).reduce((a, b) => a * b, 1);
  const runs = size / length;
  const starts = new Float64Array(runs);
  for (let r = 0; r < runs; r++) {
    // r's index on the axes before `cut`, re-raveled over the count shape
    let rest = r;
    let start = 0;
    let stride = block;
    for (let axis = cut - 1; axis >= 0; axis--) {
      start += (rest % shape[axis]!) * stride;
      rest = Math.floor(rest / shape[axis]!);
      stride *= countShape[axis]!;
    }
    starts[r] = start;
  }
  return { length, starts };
}

/**
 * The seeded dropout mask as a counter-based stream: unit i is kept iff
 * splitmix32(state0 + (i+1) * 0x9e3779b9) >= threshold (unsigned), and a kept unit is
 * scaled by `keep`. Every implementation (tfjs ops, wasm SIMD) draws from this; the
 * offset only moves state0, since the counter is linear in the unit index.
 */
export function dropoutStream({ rate, seed, salt, offset }: DropoutAttrs): { state0: number; threshold: number; keep: number } {
  return {
    state0: streamAdvance(((Math.imul(seed >>> 0, 0x9e3779b1) ^ salt) >>> 0), offset),
    threshold: Math.floor(rate * 4294967296),
    keep: Math.fround(1 / (1 - rate)),
  };
}

/** The stream's state `units` units after `state0` (a run of `dropoutRuns` starts there). */
export function streamAdvance(state0: number, units: number): number {
  // Math.imul wraps its operands mod 2^32, which is the arithmetic the counter lives in
  return (state0 + Math.imul(units % 4294967296, 0x9e3779b9)) >>> 0;
}
