/**
 * Replacement kernels for the tfjs `wasm` backend (tfjs-backend-wasm 4.22).
 *
 * - UnsortedSegmentSum: missing on wasm. It is the gradient of `gather`, so
 *   without it nothing with an embedding lookup can train on wasm.
 * - BatchMatMul: stock wasm only reaches XNNPACK when neither operand is
 *   transposed and both batch sizes are 1; every other case (all backprop
 *   matmuls, attention) falls to a naive C++ loop that is ~13x slower, and
 *   XNNPACK repacks every fresh right operand. Ours is a wasm SIMD GEMM
 *   (src/backend/simd/gemm.ts) on the same heap that reads transposed
 *   operands through strides.
 * - GeluErf (GeluErfGrad): not a tfjs kernel; exact GELU and its gradient in
 *   one SIMD pass each instead of some twenty tfjs ops over [B,S,4H].
 * - SeededDropout: not a tfjs kernel; our replayable dropout mask generated
 *   and applied in one SIMD pass instead of a JS loop plus an upload.
 * - LayerNorm (LayerNormalization, -Grad): not tfjs kernels; forward and
 *   backward one row at a time instead of about ten ops each way.
 * - SoftmaxCrossEntropy (-Grad): not tfjs kernels; the MLM loss over the
 *   vocabulary in one pass per row each way, one [T,V] tensor kept between.
 * - Identity: stock wasm copies the buffer, and the engine clones every tensor
 *   it saves for backprop through Identity, doubling activation memory. We
 *   share the data with a refcount, as tfjs-backend-cpu does.
 *
 * This module deliberately does not import tfjs-backend-wasm: it only talks to
 * the kernel registry and to the backend object handed to kernel funcs.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { KernelConfig, KernelFunc } from '@tensorflow/tfjs-core';
import { FUSED_KERNEL } from './fused-kernels.js';
import { BACKEND } from './wasm/backend-types.js';
import { makeGatherRows } from './wasm/gather.js';
import { seededDropout } from './wasm/dropout.js';
import { geluErf, geluErfGrad } from './wasm/gelu.js';
import { identity } from './wasm/identity.js';
import { layerNorm, layerNormGrad } from './wasm/layer-norm.js';
import { batchMatMul } from './wasm/matmul.js';
import { makeReduceSum } from './wasm/reduce-sum.js';
import { unsortedSegmentSum } from './wasm/segment-sum.js';
import { softmaxCrossEntropy, softmaxCrossEntropyGrad } from './wasm/softmax-cross-entropy.js';

export type WasmKernelFix = 'UnsortedSegmentSum' | 'BatchMatMul' | 'Identity' | 'Sum' | 'GatherV2' | 'GeluErf' | 'SeededDropout' | 'LayerNorm' | 'SoftmaxCrossEntropy';

export const ALL_WASM_KERNEL_FIXES: readonly WasmKernelFix[] = Object.freeze([
  'UnsortedSegmentSum',
  'BatchMatMul',
  'Identity',
  'Sum',
  'GatherV2',
  'GeluErf',
  'SeededDropout',
  'LayerNorm',
  'SoftmaxCrossEntropy',
] as const);

// ---------------------------------------------------------------------------
// Registration

/** The kernels each fix registers: one kernel name -> function each. */
const OUR_KERNELS: Record<WasmKernelFix, Array<[string, KernelFunc]>> = {
  UnsortedSegmentSum: [[tf.UnsortedSegmentSum, unsortedSegmentSum]],
  BatchMatMul: [[tf.BatchMatMul, batchMatMul]],
  Identity: [[tf.Identity, identity]],
  Sum: [[tf.Sum, makeReduceSum(() => displaced.get(tf.Sum)?.kernelFunc)]],
  GatherV2: [[tf.GatherV2, makeGatherRows(() => displaced.get(tf.GatherV2)?.kernelFunc)]],
  GeluErf: [[FUSED_KERNEL.geluErf, geluErf], [FUSED_KERNEL.geluErfGrad, geluErfGrad]],
  SeededDropout: [[FUSED_KERNEL.seededDropout, seededDropout]],
  LayerNorm: [[FUSED_KERNEL.layerNorm, layerNorm], [FUSED_KERNEL.layerNormGrad, layerNormGrad]],
  SoftmaxCrossEntropy: [
    [FUSED_KERNEL.softmaxCrossEntropy, softmaxCrossEntropy],
    [FUSED_KERNEL.softmaxCrossEntropyGrad, softmaxCrossEntropyGrad],
  ],
};

/** kernel name -> stock config ours displaced (undefined when wasm had none). */
const displaced = new Map<string, KernelConfig | undefined>();
const installed = new Set<WasmKernelFix>();

export function installWasmKernelFixes(fixes: readonly WasmKernelFix[] = ALL_WASM_KERNEL_FIXES): void {
  for (const fix of fixes) {
    if (installed.has(fix)) continue;
    const kernels = OUR_KERNELS[fix];
    if (kernels === undefined) throw new Error(`Unknown wasm kernel fix '${String(fix)}'`);
    for (const [name, kernelFunc] of kernels) {
      const stock = tf.getKernel(name, BACKEND) as KernelConfig | undefined;
      // registerKernel warns (and keeps going) over an existing entry.
      if (stock !== undefined) tf.unregisterKernel(name, BACKEND);
      // ours delegate some cases to the stock kernel, whose setup must still run
      tf.registerKernel({ kernelName: name, backendName: BACKEND, kernelFunc, setupFunc: stock?.setupFunc });
      displaced.set(name, stock);
    }
    installed.add(fix);
  }
}

export function uninstallWasmKernelFixes(): void {
  // Only touch the live backend if it already exists: tf.findBackend would
  // initialize it as a side effect.
  const live = (tf.engine().registry as Record<string, tf.KernelBackend | undefined>)[BACKEND];
  for (const [name, stock] of displaced) {
    if (tf.getKernel(name, BACKEND) !== undefined) tf.unregisterKernel(name, BACKEND);
    if (stock !== undefined) {
      tf.registerKernel(stock);
      // The engine runs setupFuncs only in setBackend; if we were installed
      // before the backend first started, the stock setup never ran.
      if (live !== undefined && stock.setupFunc !== undefined) stock.setupFunc(live);
    }
  }
  displaced.clear();
  installed.clear();
}

export function installedWasmKernelFixes(): WasmKernelFix[] {
  return ALL_WASM_KERNEL_FIXES.filter((f) => installed.has(f));
}
