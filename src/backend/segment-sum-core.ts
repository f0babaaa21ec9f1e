import * as tf from '@tensorflow/tfjs-core';
import type { TensorInfo } from '@tensorflow/tfjs-core';

export interface SegmentSumPlan {
  outShape: number[];
  /** Values per segment row. */
  inner: number;
  /** Number of segment ids. */
  count: number;
}

/** Checks the inputs of UnsortedSegmentSum as TensorFlow does and sizes the output. */
export function planSegmentSum(x: TensorInfo, segmentIds: TensorInfo, numSegments: number, backendName: string): SegmentSumPlan {
  if (x.dtype !== 'float32' && x.dtype !== 'int32') {
    throw new Error(`UnsortedSegmentSum on ${backendName} supports float32/int32 x, got ${x.dtype}`);
  }
  if (segmentIds.dtype !== 'int32') {
    throw new Error(`UnsortedSegmentSum on ${backendName} needs int32 segmentIds, got ${segmentIds.dtype}`);
  }
  const idsRank = segmentIds.shape.length;
  for (let i = 0; i < idsRank; i++) {
    if (segmentIds.shape[i] !== x.shape[i]) {
      throw new Error(`UnsortedSegmentSum: segmentIds shape [${segmentIds.shape}] must be a prefix of x shape [${x.shape}]`);
    }
  }
  const innerShape = x.shape.slice(idsRank);
  return {
    outShape: [numSegments, ...innerShape],
    inner: tf.util.sizeFromShape(innerShape),
    count: tf.util.sizeFromShape(segmentIds.shape),
  };
}

/** out[ids[i]] += x[i] row by row; `out` must be zeroed. Ids outside [0, numSegments) are dropped, as TF does. */
export function accumulateSegments(
  out: Float32Array | Int32Array,
  x: Float32Array | Int32Array,
  ids: Int32Array,
  plan: SegmentSumPlan,
): void {
  const numSegments = plan.outShape[0]!;
  const { inner } = plan;
  for (let i = 0; i < plan.count; i++) {
    const s = ids[i]!;
    if (s < 0 || s >= numSegments) continue;
    const dst = s * inner;
    const src = i * inner;
    for (let j = 0; j < inner; j++) out[dst + j]! += x[src + j]!;
  }
}
