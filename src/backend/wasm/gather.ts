import * as tf from '@tensorflow/tfjs-core';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import type { WasmBackendLike } from './backend-types.js';

/**
 * Row gather (axis 0, no batch dims): every embedding lookup. Stock wasm walks it
 * element by element (11 ms for 1024 rows of 256); copying whole rows is 50x faster.
 * Other forms go to `stock`.
 */
export function makeGatherRows(stock: () => KernelFunc | undefined): KernelFunc {
  return (args) => {
    const backend = args.backend as WasmBackendLike;
    const x = args.inputs['x'] as TensorInfo;
    const indices = args.inputs['indices'] as TensorInfo;
    const { axis, batchDims } = args.attrs as unknown as { axis: number; batchDims: number };
    const rowAxis = tf.util.parseAxisParam(axis, x.shape)[0];
    if (rowAxis !== 0 || (batchDims ?? 0) !== 0 || (x.dtype !== 'float32' && x.dtype !== 'int32') || indices.dtype !== 'int32') {
      const fallback = stock();
      if (!fallback) throw new Error('GatherV2: the stock wasm kernel is not registered');
      return fallback(args);
    }
    const rows = x.shape[0]!;
    const width = tf.util.sizeFromShape(x.shape.slice(1));
    const count = tf.util.sizeFromShape(indices.shape);
    const ids = backend.typedArrayFromHeap(indices);
    for (let i = 0; i < count; i++) {
      const id = ids[i]!;
      if (id < 0 || id >= rows) throw new Error(`GatherV2: the index value ${id} is not in [0, ${rows - 1}]`);
    }
    const out = backend.makeOutput([...indices.shape, ...x.shape.slice(1)], x.dtype);
    // views only after makeOutput: its malloc may grow (and detach) the heap
    const source = backend.typedArrayFromHeap(x);
    const target = backend.typedArrayFromHeap(out);
    const index = backend.typedArrayFromHeap(indices);
    for (let i = 0; i < count; i++) {
      const from = index[i]! * width;
      target.set(source.subarray(from, from + width), i * width);
    }
    return out;
  };
}
