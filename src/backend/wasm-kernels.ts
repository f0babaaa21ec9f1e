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
 * - Identity: stock wasm copies the buffer, and the engine clones every tensor
 *   it saves for backprop through Identity, doubling activation memory. We
 *   share the data with a refcount, as tfjs-backend-cpu does.
 *
 * This module deliberately does not import tfjs-backend-wasm: it only talks to
 * the kernel registry and to the backend object handed to kernel funcs.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { KernelConfig, KernelFunc } from '@tensorflow/tfjs-core';
import { BACKEND } from './wasm/backend-types.js';
import { makeGatherRows } from './wasm/gather.js';
import { identity } from './wasm/identity.js';
import { batchMatMul } from './wasm/matmul.js';
import { makeReduceSum } from './wasm/reduce-sum.js';
import { unsortedSegmentSum } from './wasm/segment-sum.js';

export type WasmKernelFix = 'UnsortedSegmentSum' | 'BatchMatMul' | 'Identity' | 'Sum' | 'GatherV2';

export const ALL_WASM_KERNEL_FIXES: readonly WasmKernelFix[] = Object.freeze([
  'UnsortedSegmentSum',
  'BatchMatMul',
  'Identity',
  'Sum',
  'GatherV2',
] as const);

// ---------------------------------------------------------------------------
// Registration

const KERNEL_NAME: Record<WasmKernelFix, string> = {
  UnsortedSegmentSum: tf.UnsortedSegmentSum,
  BatchMatMul: tf.BatchMatMul,
  Identity: tf.Identity,
  Sum: tf.Sum,
  GatherV2: tf.GatherV2,
};

const OUR_KERNEL: Record<WasmKernelFix, KernelFunc> = {
  UnsortedSegmentSum: unsortedSegmentSum,
  BatchMatMul: batchMatMul,
  Identity: identity,
  Sum: makeReduceSum(() => displaced.get('Sum')?.kernelFunc),
  GatherV2: makeGatherRows(() => displaced.get('GatherV2')?.kernelFunc),
};

/** fix -> stock config it displaced (undefined when wasm had none). */
const displaced = new Map<WasmKernelFix, KernelConfig | undefined>();

export function installWasmKernelFixes(fixes: readonly WasmKernelFix[] = ALL_WASM_KERNEL_FIXES): void {
  for (const fix of fixes) {
    if (displaced.has(fix)) continue;
    const name = KERNEL_NAME[fix];
    if (name === undefined) throw new Error(`Unknown wasm kernel fix '${String(fix)}'`);
    const stock = tf.getKernel(name, BACKEND) as KernelConfig | undefined;
    // registerKernel warns (and keeps going) over an existing entry.
    if (stock !== undefined) tf.unregisterKernel(name, BACKEND);
    // ours delegate some cases to the stock kernel, whose setup must still run
    tf.registerKernel({ kernelName: name, backendName: BACKEND, kernelFunc: OUR_KERNEL[fix], setupFunc: stock?.setupFunc });
    displaced.set(fix, stock);
  }
}

export function uninstallWasmKernelFixes(): void {
  // Only touch the live backend if it already exists: tf.findBackend would
  // initialize it as a side effect.
  const live = (tf.engine().registry as Record<string, tf.KernelBackend | undefined>)[BACKEND];
  for (const [fix, stock] of displaced) {
    const name = KERNEL_NAME[fix];
    if (tf.getKernel(name, BACKEND) !== undefined) tf.unregisterKernel(name, BACKEND);
    if (stock !== undefined) {
      tf.registerKernel(stock);
      // The engine runs setupFuncs only in setBackend; if we were installed
      // before the backend first started, the stock setup never ran.
      if (live !== undefined && stock.setupFunc !== undefined) stock.setupFunc(live);
    }
  }
  displaced.clear();
}

export function installedWasmKernelFixes(): WasmKernelFix[] {
  return ALL_WASM_KERNEL_FIXES.filter((f) => displaced.has(f));
}
