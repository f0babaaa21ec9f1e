import * as tf from '@tensorflow/tfjs-core';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import type { WasmBackendLike } from './backend-types.js';

/**
 * Sum over leading axes (column sums), the reduction behind every bias and LayerNorm
 * gradient. Stock wasm transposes the reduced axes to the end first and then sums:
 * about 4x slower than summing rows in place. Any other reduction goes to `stock`.
 */
export function makeReduceSum(stock: () => KernelFunc | undefined): KernelFunc {
  return (args) => {
    const backend = args.backend as WasmBackendLike;
    const x = args.inputs['x'] as TensorInfo;
    const { axis, keepDims } = args.attrs as unknown as { axis: number | number[]; keepDims: boolean };
    const axes = tf.util.parseAxisParam(axis, x.shape).sort((a, b) => a - b);
    const leading = axes.length > 0 && axes.length < x.shape.length && axes.every((a, i) => a === i);
    if (!leading || x.dtype !== 'float32') {
      const fallback = stock();
      if (!fallback) throw new Error('Sum: the stock wasm kernel is not registered');
      return fallback(args);
    }
    const rows = tf.util.sizeFromShape(x.shape.slice(0, axes.length));
    const width = tf.util.sizeFromShape(x.shape.slice(axes.length));
    const outShape = keepDims ? x.shape.map((d, i) => (i < axes.length ? 1 : d)) : x.shape.slice(axes.length);
    const out = backend.makeOutput(outShape, 'float32');
    // views only after makeOutput: its malloc may grow (and detach) the heap
    const values = backend.typedArrayFromHeap(x) as Float32Array;
    const acc = new Float64Array(width);
    let r = 0;
    // four rows per pass halves the loads and stores of the accumulator
    for (; r + 4 <= rows; r += 4) {
      const o0 = r * width;
      const o1 = o0 + width;
      const o2 = o1 + width;
      const o3 = o2 + width;
      for (let c = 0; c < width; c++) acc[c]! += values[o0 + c]! + values[o1 + c]! + values[o2 + c]! + values[o3 + c]!;
    }
    for (; r < rows; r++) {
      const offset = r * width;
      for (let c = 0; c < width; c++) acc[c]! += values[offset + c]!;
    }
    (backend.typedArrayFromHeap(out) as Float32Array).set(acc);
    return out;
  };
}
