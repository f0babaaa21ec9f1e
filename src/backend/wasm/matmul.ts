import * as tf from '@tensorflow/tfjs-core';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { type WasmBackendLike, heapOffset } from './backend-types.js';
import { simdKernels } from './simd-module.js';

/** Index into each operand's batch for every output batch, numpy-broadcast. */
function batchIndexMaps(outerA: number[], outerB: number[], outerOut: number[]): [Int32Array, Int32Array] {
  const total = tf.util.sizeFromShape(outerOut);
  const rank = outerOut.length;
  const mapFor = (outer: number[]): Int32Array => {
    const idx = new Int32Array(total);
    const padded = new Array<number>(rank - outer.length).fill(1).concat(outer);
    const strides = new Array<number>(rank).fill(0);
    let s = 1;
    for (let d = rank - 1; d >= 0; d--) {
      strides[d] = padded[d] === 1 ? 0 : s;
      s *= padded[d]!;
    }
    for (let i = 0; i < total; i++) {
      let rem = i;
      let off = 0;
      for (let d = rank - 1; d >= 0; d--) {
        const dim = outerOut[d]!;
        off += (rem % dim) * strides[d]!;
        rem = Math.floor(rem / dim);
      }
      idx[i] = off;
    }
    return idx;
  };
  return [mapFor(outerA), mapFor(outerB)];
}

/**
 * Every BatchMatMul on our wasm SIMD GEMM, which reads transposed operands through
 * strides. Stock wasm takes a naive C++ loop (~13x slower) for any transposed or
 * batched operand, and even its XNNPACK path repacks every fresh right operand.
 */
export const batchMatMul: KernelFunc = ({ inputs, backend: bk, attrs }) => {
  const backend = bk as WasmBackendLike;
  const a = inputs['a'] as TensorInfo;
  const b = inputs['b'] as TensorInfo;
  const { transposeA, transposeB } = attrs as { transposeA: boolean; transposeB: boolean };
  if (a.dtype !== 'float32' || b.dtype !== 'float32') {
    // Same message as the stock kernel.
    throw new Error(`BatchMatMul for non non-float32 tensors not yet supported.`);
  }
  const aRank = a.shape.length;
  const bRank = b.shape.length;
  const k = transposeA ? a.shape[aRank - 2]! : a.shape[aRank - 1]!;
  const kB = transposeB ? b.shape[bRank - 1]! : b.shape[bRank - 2]!;
  const m = transposeA ? a.shape[aRank - 1]! : a.shape[aRank - 2]!;
  const n = transposeB ? b.shape[bRank - 2]! : b.shape[bRank - 1]!;
  tf.util.assert(k === kB, () => `Error in matMul: inner shapes (${k}) and (${kB}) of Tensors with ` +
      `shapes ${a.shape} and ${b.shape} and transposeA=${transposeA} and transposeB=${transposeB} must match.`);
  const outerA = a.shape.slice(0, -2);
  const outerB = b.shape.slice(0, -2);
  const outerOut = tf.broadcast_util.assertAndGetBroadcastShape(outerA, outerB);
  const batchA = tf.util.sizeFromShape(outerA);
  const batchB = tf.util.sizeFromShape(outerB);
  const batchOut = tf.util.sizeFromShape(outerOut);

  // Instantiated (and its scratch allocated) before any offset below is read.
  const { gemm } = simdKernels(backend);
  const out = backend.makeOutput([...outerOut, m, n], 'float32');
  if (batchOut * m * n === 0) return out;
  if (k === 0) {
    backend.typedArrayFromHeap(out).fill(0);
    return out;
  }
  const aOffset = heapOffset(backend, a);
  const bOffset = heapOffset(backend, b);
  const outOffset = heapOffset(backend, out);
  // (row, inner) strides of op(A) and (inner, column) strides of op(B), in floats
  const [sAi, sAk] = transposeA ? [1, m] : [k, 1];
  const [sBk, sBj] = transposeB ? [1, k] : [n, 1];

  if (batchB === 1 && !transposeA) {
    // b broadcasts over every batch of a, whose batches are then just more rows.
    gemm(batchA * m, n, k, aOffset, sAi, sAk, bOffset, sBk, sBj, outOffset);
    return out;
  }
  const [idxA, idxB] = batchIndexMaps(outerA, outerB, outerOut);
  const aBytes = m * k * 4;
  const bBytes = k * n * 4;
  const outBytes = m * n * 4;
  for (let i = 0; i < batchOut; i++) {
    gemm(m, n, k, aOffset + idxA[i]! * aBytes, sAi, sAk, bOffset + idxB[i]! * bBytes, sBk, sBj, outOffset + i * outBytes);
  }
  return out;
};
