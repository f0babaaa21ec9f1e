import * as tf from '@tensorflow/tfjs-core';
import type { WasmBackendLike } from './wasm/backend-types.js';

interface CpuBackendLike {
  data: { get(dataId: object): { values?: unknown } | undefined };
}

interface RefCounting {
  refCount(dataId: object): number;
}

/*
 * No write in place: stock wasm kernels (FusedMatMul, Conv2D, and BatchMatMul without our
 * fix) cache an XNNPACK operator, with its own packed copy of the weights, per operand
 * tensor; overwriting a variable's memory keeps its tensor id, so every later product
 * would use the old weights. Writes go through assign.
 */

/** A tensor's own float32 storage (a view into the wasm heap, the cpu backend's array), if reachable. */
function storageOf(tensor: tf.Tensor): Float32Array | undefined {
  if (tensor.dtype !== 'float32') return undefined;
  const backend = tf.backend();
  const name = tf.getBackend();
  if (name === 'wasm') {
    const wasm = backend as unknown as WasmBackendLike;
    const data = wasm.dataIdMap.get(tensor.dataId);
    if (!data || typeof data.memoryOffset !== 'number') return undefined;
    return new Float32Array(wasm.wasm.HEAPU8.buffer, data.memoryOffset, tensor.size);
  }
  if (name === 'cpu') {
    const stored = (backend as unknown as CpuBackendLike).data.get(tensor.dataId)?.values;
    return stored instanceof Float32Array && stored.length === tensor.size ? stored : undefined;
  }
  return undefined;
}

/**
 * A copy of a float32 tensor's values (a variable the optimizer reads, a gradient the trainer
 * reads into its host buffer), into `target` when given (no allocation per read: this runs
 * for every weight every step), else into a fresh array: one copy straight from the
 * backend's memory, where `dataSync` would copy twice and leave the garbage collector an
 * array of the tensor's size.
 */
export function readTensorCopy(tensor: tf.Tensor, target?: Float32Array): Float32Array {
  if (target && target.length !== tensor.size) throw new Error(`a tensor of ${tensor.size} values read into ${target.length}`);
  const out = target ?? new Float32Array(tensor.size);
  out.set(readTensorView(tensor));
  return out;
}

/** The tensor's values, to read at once and not keep: a view of the backend's memory where it can be, else a copy. */
export function readTensorView(tensor: tf.Tensor): Float32Array {
  return storageOf(tensor) ?? (tensor.dataSync() as Float32Array);
}

/**
 * target[rows[r], :] += values[r, :] for a float32 [V, D] `target`, in its own storage: the
 * gradient of a gather (an embedding lookup) added into the gradient its table already has
 * (the tied output projection's), without a dense [V, D] gradient of the gather and a new
 * tensor for the sum. Only where the storage is reachable and no other tensor shares it (a
 * reshape or clone shares storage: writing would change that tensor too); false, with
 * nothing changed, otherwise. Rows out of range are an error, as the gather's would be.
 * The backend's reference count does not see an array held outside tfjs: the cpu backend
 * keeps the array `tf.tensor(values)` was given, so `target` must be a tensor a kernel made
 * (a gradient is), never one made from the caller's array.
 */
export function addRowsInPlace(target: tf.Tensor, rows: Int32Array | Float32Array | Uint8Array, values: Float32Array): boolean {
  if (target.rank !== 2 || target.dtype !== 'float32') return false;
  const [count, width] = target.shape as [number, number];
  if (values.length !== rows.length * width) throw new Error(`${values.length} values for ${rows.length} rows of ${width}`);
  const backend = tf.backend() as unknown as Partial<RefCounting>;
  if (typeof backend.refCount !== 'function' || backend.refCount(target.dataId) !== 1) return false;
  for (const row of rows) if (!(row >= 0 && row < count)) throw new Error(`row ${row} of a table of ${count} rows`);
  // the view last: nothing below allocates on the backend (a growing wasm heap detaches views)
  const storage = storageOf(target);
  if (!storage) return false;
  for (let r = 0; r < rows.length; r++) {
    const at = rows[r]! * width;
    const from = r * width;
    for (let j = 0; j < width; j++) storage[at + j]! += values[from + j]!;
  }
  return true;
}

/**
 * Whether `tf.tensor(values)` copies `values` on the current backend (wasm moves them into
 * its heap), so that the caller may reuse the array at once; the cpu backend keeps it.
 */
export function tensorCreationCopies(): boolean {
  return tf.getBackend() === 'wasm';
}

