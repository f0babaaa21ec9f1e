import * as tf from '@tensorflow/tfjs-core';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { type WasmBackendLike, heapOffset, requireFloat32 } from './backend-types.js';
import { simdKernels } from './simd-module.js';

interface LayerNormAttrs {
  epsilon: number;
}

/** [rows, width] of x, checking that gamma (and beta) match its last axis. */
function rowsAndWidth(kernel: string, x: TensorInfo, params: Array<[string, TensorInfo]>): [number, number] {
  const width = x.shape[x.shape.length - 1] ?? 1;
  for (const [name, t] of [['x', x] as [string, TensorInfo], ...params]) requireFloat32(t, `${kernel} ${name}`);
  for (const [name, p] of params) {
    if (p.shape.length !== 1 || p.shape[0] !== width) {
      throw new Error(`${kernel}: ${name} has shape [${p.shape}], expected [${width}] (the last axis of x [${x.shape}])`);
    }
  }
  const size = tf.util.sizeFromShape(x.shape);
  return [width === 0 ? 0 : size / width, width];
}

/** Layer normalisation over the last axis in one pass per row (see src/backend/simd/layer-norm.ts). */
export const layerNorm: KernelFunc = ({ inputs, backend: bk, attrs }) => {
  const backend = bk as WasmBackendLike;
  const x = inputs['x'] as TensorInfo;
  const gamma = inputs['gamma'] as TensorInfo;
  const beta = inputs['beta'] as TensorInfo;
  const { epsilon } = attrs as unknown as LayerNormAttrs;
  const [rows, width] = rowsAndWidth('LayerNormalization', x, [['gamma', gamma], ['beta', beta]]);
  const kernels = simdKernels(backend);
  const out = backend.makeOutput([...x.shape], 'float32');
  if (rows * width > 0) {
    const at = (t: TensorInfo): number => heapOffset(backend, t);
    kernels.layerNormForward(at(x), at(gamma), at(beta), at(out), rows, width, epsilon);
  }
  return out;
};

/** [dx, dGamma, dBeta] of layer normalisation, the row statistics recomputed from x. */
export const layerNormGrad: KernelFunc = ({ inputs, backend: bk, attrs }) => {
  const backend = bk as WasmBackendLike;
  const dy = inputs['dy'] as TensorInfo;
  const x = inputs['x'] as TensorInfo;
  const gamma = inputs['gamma'] as TensorInfo;
  const { epsilon } = attrs as unknown as LayerNormAttrs;
  requireFloat32(dy, 'LayerNormalizationGrad dy');
  if (dy.shape.join() !== x.shape.join()) throw new Error(`LayerNormalizationGrad: dy [${dy.shape}] and x [${x.shape}] differ in shape`);
  const [rows, width] = rowsAndWidth('LayerNormalizationGrad', x, [['gamma', gamma]]);
  const kernels = simdKernels(backend);
  const dx = backend.makeOutput([...x.shape], 'float32');
  const dGamma = backend.makeOutput([width], 'float32');
  const dBeta = backend.makeOutput([width], 'float32');
  const at = (t: TensorInfo): number => heapOffset(backend, t);
  if (width > 0) kernels.layerNormBackward(at(dy), at(x), at(gamma), at(dx), at(dGamma), at(dBeta), rows, width, epsilon);
  return [dx, dGamma, dBeta];
};
