import * as tf from '@tensorflow/tfjs-core';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { type WasmBackendLike, heapOffset, requireFloat32 } from './backend-types.js';
import { simdKernels } from './simd-module.js';

/** Exact GELU in one SIMD pass (see src/backend/simd/gelu.ts). */
export const geluErf: KernelFunc = ({ inputs, backend: bk }) => {
  const backend = bk as WasmBackendLike;
  const x = requireFloat32(inputs['x'] as TensorInfo, 'GeluErf x');
  const kernels = simdKernels(backend);
  const out = backend.makeOutput([...x.shape], 'float32');
  const size = tf.util.sizeFromShape(x.shape);
  if (size > 0) kernels.geluForward(heapOffset(backend, x), heapOffset(backend, out), size);
  return out;
};

/** dy * GELU'(x) in one SIMD pass. */
export const geluErfGrad: KernelFunc = ({ inputs, backend: bk }) => {
  const backend = bk as WasmBackendLike;
  const dy = requireFloat32(inputs['dy'] as TensorInfo, 'GeluErfGrad dy');
  const x = requireFloat32(inputs['x'] as TensorInfo, 'GeluErfGrad x');
  if (dy.shape.join() !== x.shape.join()) throw new Error(`GeluErfGrad: dy [${dy.shape}] and x [${x.shape}] differ in shape`);
  const kernels = simdKernels(backend);
  const dx = backend.makeOutput([...x.shape], 'float32');
  const size = tf.util.sizeFromShape(x.shape);
  if (size > 0) kernels.geluBackward(heapOffset(backend, dy), heapOffset(backend, x), heapOffset(backend, dx), size);
  return dx;
};
