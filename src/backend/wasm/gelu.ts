import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { type WasmBackendLike, tensorData } from './backend-types.js';
import { simdKernels } from './simd-module.js';

function float32(t: TensorInfo, what: string): TensorInfo {
  if (t.dtype !== 'float32') throw new Error(`${what}: expected float32, got ${t.dtype}`);
  return t;
}

/** Exact GELU in one SIMD pass (see src/backend/simd/gelu.ts). */
export const geluErf: KernelFunc = ({ inputs, backend: bk }) => {
  const backend = bk as WasmBackendLike;
  const x = float32(inputs['x'] as TensorInfo, 'GeluErf x');
  const kernels = simdKernels(backend);
  const out = backend.makeOutput([...x.shape], 'float32');
  const size = x.shape.reduce((a, b) => a * b, 1);
  if (size > 0) kernels.geluForward(tensorData(backend, x).memoryOffset, tensorData(backend, out).memoryOffset, size);
  return out;
};

/** dy * GELU'(x) in one SIMD pass. */
export const geluErfGrad: KernelFunc = ({ inputs, backend: bk }) => {
  const backend = bk as WasmBackendLike;
  const dy = float32(inputs['dy'] as TensorInfo, 'GeluErfGrad dy');
  const x = float32(inputs['x'] as TensorInfo, 'GeluErfGrad x');
  if (dy.shape.join() !== x.shape.join()) throw new Error(`GeluErfGrad: dy [${dy.shape}] and x [${x.shape}] differ in shape`);
  const kernels = simdKernels(backend);
  const dx = backend.makeOutput([...x.shape], 'float32');
  const size = x.shape.reduce((a, b) => a * b, 1);
  if (size > 0) {
    kernels.geluBackward(tensorData(backend, dy).memoryOffset, tensorData(backend, x).memoryOffset,
        tensorData(backend, dx).memoryOffset, size);
  }
  return dx;
};
