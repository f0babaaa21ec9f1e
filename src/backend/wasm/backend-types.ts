import type * as tf from '@tensorflow/tfjs-core';
import type { TensorInfo } from '@tensorflow/tfjs-core';

export const BACKEND = 'wasm';

/** The slice of BackendWasm (tfjs-backend-wasm/dist/backend_wasm.js) our kernels rely on. */

export interface WasmTensorData {
  id: number;
  memoryOffset: number;
  shape: number[];
  dtype: tf.DataType;
  refCount: number;
}

export interface WasmModule {
  HEAPU8: Uint8Array;
  /** The emscripten module's wasm exports; `memory` is the heap every tensor lives in. */
  asm?: { memory?: WebAssembly.Memory };
  _malloc(bytes: number): number;
}

export interface WasmBackendLike {
  wasm: WasmModule;
  dataIdMap: { get(dataId: object): WasmTensorData | undefined };
  makeOutput(shape: number[], dtype: tf.DataType): TensorInfo;
  typedArrayFromHeap(t: TensorInfo): Float32Array | Int32Array | Uint8Array;
  incRef(dataId: object): void;
}

export function tensorData(backend: WasmBackendLike, t: TensorInfo): WasmTensorData {
  const d = backend.dataIdMap.get(t.dataId);
  if (d === undefined) throw new Error('wasm-kernels: tensor data not found on the wasm backend');
  return d;
}

/** The tensor's byte offset in the wasm heap, what our SIMD kernels take as a pointer. */
export function heapOffset(backend: WasmBackendLike, t: TensorInfo): number {
  return tensorData(backend, t).memoryOffset;
}

/** `t`, after checking it is float32 (`what` names the kernel input in the error). */
export function requireFloat32(t: TensorInfo, what: string): TensorInfo {
  if (t.dtype !== 'float32') throw new Error(`${what}: expected float32, got ${t.dtype}`);
  return t;
}
