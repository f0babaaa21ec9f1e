import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { type WasmBackendLike, heapOffset } from './backend-types.js';
import { simdKernels } from './simd-module.js';

/** [rows, vocab] of the logits, after checking the labels' dtype, shape and range. */
function checkedShape(kernel: string, backend: WasmBackendLike, rowsOf: TensorInfo, labels: TensorInfo): [number, number] {
  if (rowsOf.dtype !== 'float32' || rowsOf.shape.length !== 2) {
    throw new Error(`${kernel}: expected float32 [rows, vocab], got ${rowsOf.dtype} [${rowsOf.shape}]`);
  }
  const [rows, vocab] = rowsOf.shape as [number, number];
  if (labels.dtype !== 'int32' || labels.shape.length !== 1 || labels.shape[0] !== rows) {
    throw new Error(`${kernel}: labels must be int32 [${rows}], got ${labels.dtype} [${labels.shape}]`);
  }
  const values = backend.typedArrayFromHeap(labels);
  for (let i = 0; i < values.length; i++) {
    const label = values[i]!;
    if (!(label >= 0 && label < vocab)) throw new Error(`${kernel}: label ${label} at row ${i} is outside the vocabulary [0, ${vocab})`);
  }
  return [rows, vocab];
}

/** [per-row loss, softmax probabilities] in one pass per row (see src/backend/simd/softmax-cross-entropy.ts). */
export const softmaxCrossEntropy: KernelFunc = ({ inputs, backend: bk }) => {
  const backend = bk as WasmBackendLike;
  const logits = inputs['logits'] as TensorInfo;
  const labels = inputs['labels'] as TensorInfo;
  const [rows, vocab] = checkedShape('SoftmaxCrossEntropy', backend, logits, labels);
  const kernels = simdKernels(backend);
  const loss = backend.makeOutput([rows], 'float32');
  const probs = backend.makeOutput([rows, vocab], 'float32');
  const at = (t: TensorInfo): number => heapOffset(backend, t);
  if (rows * vocab > 0) kernels.softmaxCrossEntropy(at(logits), at(labels), at(loss), at(probs), rows, vocab);
  return [loss, probs];
};

/** (probs - onehot(labels)) * dy per row, in one pass. */
export const softmaxCrossEntropyGrad: KernelFunc = ({ inputs, backend: bk }) => {
  const backend = bk as WasmBackendLike;
  const probs = inputs['probs'] as TensorInfo;
  const labels = inputs['labels'] as TensorInfo;
  const dy = inputs['dy'] as TensorInfo;
  const [rows, vocab] = checkedShape('SoftmaxCrossEntropyGrad', backend, probs, labels);
  if (dy.dtype !== 'float32' || dy.shape.length !== 1 || dy.shape[0] !== rows) {
    throw new Error(`SoftmaxCrossEntropyGrad: dy must be float32 [${rows}], got ${dy.dtype} [${dy.shape}]`);
  }
  const kernels = simdKernels(backend);
  const dLogits = backend.makeOutput([rows, vocab], 'float32');
  const at = (t: TensorInfo): number => heapOffset(backend, t);
  if (rows * vocab > 0) kernels.softmaxCrossEntropyBackward(at(probs), at(labels), at(dy), at(dLogits), rows, vocab);
  return dLogits;
};
