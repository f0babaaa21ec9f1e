import * as tf from '@tensorflow/tfjs-core';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { type DropoutAttrs, dropoutStream } from '../fused-kernels.js';
import { type WasmBackendLike, heapOffset, requireFloat32 } from './backend-types.js';
import { simdKernels } from './simd-module.js';

/** Seeded dropout in one SIMD pass, the same mask as the tfjs-ops path (see src/backend/simd/dropout.ts). */
export const seededDropout: KernelFunc = ({ inputs, backend: bk, attrs }) => {
  const backend = bk as WasmBackendLike;
  const x = requireFloat32(inputs['x'] as TensorInfo, 'SeededDropout x');
  const { rate } = attrs as unknown as DropoutAttrs;
  if (!(rate >= 0 && rate < 1)) throw new Error(`SeededDropout: rate must be in [0, 1), got ${rate}`);
  const { state0, threshold, keep } = dropoutStream(attrs as unknown as DropoutAttrs);
  const kernels = simdKernels(backend);
  const out = backend.makeOutput([...x.shape], 'float32');
  const size = tf.util.sizeFromShape(x.shape);
  if (size > 0) kernels.dropout(heapOffset(backend, x), heapOffset(backend, out), size, state0, threshold, keep);
  return out;
};
