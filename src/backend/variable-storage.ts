import * as tf from '@tensorflow/tfjs-core';
import type { WasmBackendLike } from './wasm/backend-types.js';

interface RefCounting {
  refCount?(dataId: object): number;
}

interface CpuBackendLike {
  data: { get(dataId: object): { values?: unknown } | undefined };
}

/**
 * Overwrites a variable's values in its own wasm heap memory when no other tensor shares
 * that memory; returns false when it cannot, and the caller assigns a fresh tensor
 * instead. Saves a malloc, a copy and a free per weight and step. Only on wasm: there,
 * every other view of the data (reshape, our Identity) shares the dataId and so shows in
 * the refCount, while the cpu backend's slices and dataSync results are views of the same
 * array that no count records. Reads backend internals (tfjs pinned to 4.22.0).
 */
export function writeVariableInPlace(variable: tf.Variable, values: Float32Array): boolean {
  if (variable.dtype !== 'float32' || values.length !== variable.size || tf.getBackend() !== 'wasm') return false;
  const backend = tf.backend() as unknown as RefCounting;
  if (backend.refCount?.(variable.dataId) !== 1) return false;
  const storage = storageOf(variable);
  if (!storage) return false;
  storage.set(values);
  return true;
}

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
