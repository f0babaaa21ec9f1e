import * as tf from '@tensorflow/tfjs-core';
import type { WasmBackendLike } from './wasm/backend-types.js';

interface RefCounting {
  refCount?(dataId: object): number;
}

interface CpuBackendLike {
  data: { get(dataId: object): { values?: unknown } | undefined };
}

/**
 * Overwrites a variable's values in its own storage (the wasm heap, the cpu backend's
 * array) when no other tensor shares that storage; returns false when it cannot, and the
 * caller assigns a fresh tensor instead. Saves a malloc, a copy and a free per weight and
 * step. Reads backend internals, like the kernel fixes (tfjs pinned to 4.22.0).
 */
export function writeVariableInPlace(variable: tf.Variable, values: Float32Array): boolean {
  if (variable.dtype !== 'float32' || values.length !== variable.size) return false;
  const backend = tf.backend() as unknown as RefCounting;
  if (backend.refCount?.(variable.dataId) !== 1) return false;
  const name = tf.getBackend();
  if (name === 'wasm') {
    const wasm = backend as unknown as WasmBackendLike;
    const data = wasm.dataIdMap.get(variable.dataId);
    if (!data || typeof data.memoryOffset !== 'number') return false;
    new Float32Array(wasm.wasm.HEAPU8.buffer, data.memoryOffset, values.length).set(values);
    return true;
  }
  if (name === 'cpu') {
    const stored = (backend as unknown as CpuBackendLike).data.get(variable.dataId)?.values;
    if (!(stored instanceof Float32Array) || stored.length !== values.length) return false;
    stored.set(values);
    return true;
  }
  return false;
}

/** A variable's values as a fresh array the caller owns (the cpu backend's dataSync hands out its own storage). */
export function readVariableCopy(variable: tf.Variable): Float32Array {
  const data = variable.dataSync() as Float32Array;
  return tf.getBackend() === 'wasm' ? data : new Float32Array(data);
}
