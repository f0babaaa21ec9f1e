import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import type { WasmBackendLike } from './backend-types.js';

/** Shares the buffer (refcounted) instead of copying it: the engine clones every tensor it saves for backprop. */
export const identity: KernelFunc = ({ inputs, backend: b }) => {
  const backend = b as WasmBackendLike;
  const x = inputs['x'] as TensorInfo;
  backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
};
