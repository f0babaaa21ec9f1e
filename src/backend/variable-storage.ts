import * as tf from '@tensorflow/tfjs-core';
import type { WasmBackendLike } from './wasm/backend-types.js';

interface CpuBackendLike {
  data: { get(dataId: object): { values?: unknown } | undefined };
}

/*
 * No write in place: stock wasm kernels (FusedMatMul, Conv2D, and BatchMatMul without our
 * fix) cache an XNNPACK operator, with its own packed copy of the weights, per operand
 * tensor; overwriting a variable's memory keeps its tensor id, so every later product
 * would use the old weights. Writes go through assign.
 */

/** The variable's own float32 storage (a view into the wasm heap, the cpu backend's array), if reachable. */
function storageOf(variable: tf.Variable): Float32Array | undefined {
  if (variable.dtype !== 'float32') return undefined;
  const backend = tf.backend();
  const name = tf.getBackend();
  if (name === 'wasm') {
    const wasm = backend as unknown as WasmBackendLike;
    const data = wasm.dataIdMap.get(variable.dataId);
    if (!data || typeof data.memoryOffset !== 'number') return undefined;
    return new Float32Array(wasm.wasm.HEAPU8.buffer, data.memoryOffset, variable.size);
  }
  if (name === 'cpu') {
    const stored = (backend as unknown as CpuBackendLike).data.get(variable.dataId)?.values;
    return stored instanceof Float32Array && stored.length === variable.size ? stored : undefined;
  }
  return undefined;
}

/**
 * A copy of a variable's values, into `target` when given (no allocation per read: an
 * optimizer reads every weight every step), else into a fresh array.
 */
export function readVariableCopy(variable: tf.Variable, target?: Float32Array): Float32Array {
  const out = target && target.length === variable.size ? target : new Float32Array(variable.size);
  out.set(storageOf(variable) ?? (variable.dataSync() as Float32Array));
  return out;
}
