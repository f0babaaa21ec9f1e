import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { accumulateSegments, planSegmentSum } from '../segment-sum-core.js';
import type { WasmBackendLike } from './backend-types.js';

/** The gradient of gather (every embedding lookup); missing on stock wasm. */
export const unsortedSegmentSum: KernelFunc = ({ inputs, backend: b, attrs }) => {
  const backend = b as WasmBackendLike;
  const x = inputs['x'] as TensorInfo;
  const segmentIds = inputs['segmentIds'] as TensorInfo;
  const plan = planSegmentSum(x, segmentIds, Number((attrs as { numSegments: number }).numSegments), 'wasm');
  const out = backend.makeOutput(plan.outShape, x.dtype);
  // Views only after makeOutput: its malloc may grow (and detach) the heap.
  const outVals = backend.typedArrayFromHeap(out) as Float32Array | Int32Array;
  // malloc'd memory is recycled, not zeroed.
  outVals.fill(0);
  if (plan.count === 0 || plan.inner === 0) return out;
  accumulateSegments(
    outVals,
    backend.typedArrayFromHeap(x) as Float32Array | Int32Array,
    backend.typedArrayFromHeap(segmentIds) as Int32Array,
    plan,
  );
  return out;
};
