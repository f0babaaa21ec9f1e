import * as tf from '@tensorflow/tfjs-core';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { type DropoutAttrs, dropoutRuns, dropoutStream, streamAdvance } from '../fused-kernels.js';
import { type WasmBackendLike, heapOffset, requireFloat32 } from './backend-types.js';
import { simdKernels } from './simd-module.js';

/** Seeded dropout in one SIMD pass, the same mask as the tfjs-ops path (see src/backend/simd/dropout.ts). */
export const seededDropout: KernelFunc = ({ inputs, backend: bk, attrs }) => {
  const backend = bk as WasmBackendLike;
  const x = requireFloat32(inputs['x'] as TensorInfo, 'SeededDropout x');
  const dropout = attrs as unknown as DropoutAttrs;
  if (!(dropout.rate >= 0 && dropout.rate < 1)) throw new Error(`SeededDropout: rate must be in [0, 1), got ${dropout.rate}`);
  const kernels = simdKernels(backend);
  const out = backend.makeOutput([...x.shape], 'float32');
  const size = tf.util.sizeFromShape(x.shape);
  if (size === 0) return out;
  const { length, starts } = dropoutRuns(x.shape, dropout.countShape);
  const [from, to] = [heapOffset(backend, x), heapOffset(backend, out)];
  const { state0, threshold, keep } = dropoutStream(dropout);
  for (let r = 0; r < starts.length; r++) {
    kernels.dropout(from + 4 * r * length, to + 4 * r * length, length, streamAdvance(state0, starts[r]!), threshold, keep);
  }
  return out;
};
