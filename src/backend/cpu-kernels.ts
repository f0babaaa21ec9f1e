/**
 * Replacement kernels for tfjs-backend-cpu 4.22.
 *
 * - UnsortedSegmentSum: the stock kernel loops over every segment building a mask the
 *   size of the input and keeps all of them until the end: O(segments x ids x width)
 *   time and memory. For an embedding gradient over a 21k vocabulary that is minutes
 *   and tens of GB per step; accumulating rows is O(ids x width).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { accumulateSegments, planSegmentSum } from './segment-sum-core.js';

const BACKEND = 'cpu';

/** The slice of MathBackendCPU our kernels use. */
interface CpuBackendLike {
  data: { get(dataId: object): { values: ArrayLike<number> } };
  makeTensorInfo(shape: number[], dtype: tf.DataType, values?: Float32Array | Int32Array): TensorInfo;
}

const unsortedSegmentSum: KernelFunc = ({ inputs, backend: b, attrs }) => {
  const backend = b as CpuBackendLike;
  const x = inputs['x'] as TensorInfo;
  const segmentIds = inputs['segmentIds'] as TensorInfo;
  const plan = planSegmentSum(x, segmentIds, Number((attrs as { numSegments: number }).numSegments), 'cpu');
  const size = tf.util.sizeFromShape(plan.outShape);
  const out = x.dtype === 'int32' ? new Int32Array(size) : new Float32Array(size);
  accumulateSegments(
    out,
    backend.data.get(x.dataId).values as Float32Array | Int32Array,
    backend.data.get(segmentIds.dataId).values as Int32Array,
    plan,
  );
  return backend.makeTensorInfo(plan.outShape, x.dtype, out);
};

let stock: KernelConfig | undefined;
let installed = false;

export function installCpuKernelFixes(): void {
  if (installed) return;
  stock = tf.getKernel(tf.UnsortedSegmentSum, BACKEND) as KernelConfig | undefined;
  if (stock) tf.unregisterKernel(tf.UnsortedSegmentSum, BACKEND);
  tf.registerKernel({ kernelName: tf.UnsortedSegmentSum, backendName: BACKEND, kernelFunc: unsortedSegmentSum });
  installed = true;
}

export function uninstallCpuKernelFixes(): void {
  if (!installed) return;
  tf.unregisterKernel(tf.UnsortedSegmentSum, BACKEND);
  if (stock) tf.registerKernel(stock);
  installed = false;
}
