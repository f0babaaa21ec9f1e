import * as tf from '@tensorflow/tfjs-core';
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import { BACKEND, type WasmBackendLike, type WasmModule, tensorData } from './backend-types.js';

type CppBatchMatMul = (aId: number, aShape: Uint8Array, aShapeLen: number,
    bId: number, bShape: Uint8Array, bShapeLen: number,
    transposeA: number, transposeB: number, outId: number) => void;

// Keyed by the emscripten module so a re-created backend gets a fresh wrapper.
const cppMatMulCache = new WeakMap<WasmModule, CppBatchMatMul>();

function cppBatchMatMul(backend: WasmBackendLike): CppBatchMatMul {
  let fn = cppMatMulCache.get(backend.wasm);
  if (fn === undefined) {
    const raw = backend.wasm.cwrap('BatchMatMul', null,
        ['number', 'array', 'number', 'number', 'array', 'number', 'number', 'number', 'number']);
    fn = raw as CppBatchMatMul;
    cppMatMulCache.set(backend.wasm, fn);
  }
  return fn;
}

function shapeBytes(shape: readonly number[]): Uint8Array {
  return new Uint8Array(new Int32Array(shape).buffer);
}

/**
 * out[M,N] = a[M,K] @ b[K,N] on XNNPACK. Only the untransposed, batch-1 form
 * reaches the fast path, so that is the only form we ever call.
 */
function fastMatMul(backend: WasmBackendLike, aId: number, bId: number, outId: number,
    m: number, k: number, n: number): void {
  cppBatchMatMul(backend)(aId, shapeBytes([1, m, k]), 3, bId, shapeBytes([1, k, n]), 3, 0, 0, outId);
}

// The C++ side caches one XNNPACK operator per b tensor id, built for the
// (K, N) of its first use. Reshapes share the data id, so a reshaped alias of
// b with another K would hit that stale operator; stock wasm aborts the whole
// module there. Remember each b's K and go through a fresh view id on change.
const innerDimSeenAsB = new WeakMap<object, number>();

function mayCacheOnB(b: TensorInfo, k: number): boolean {
  const seen = innerDimSeenAsB.get(b.dataId);
  if (seen === undefined) {
    innerDimSeenAsB.set(b.dataId, k);
    return true;
  }
  return seen === k;
}

function transposeLastTwo(backend: WasmBackendLike, x: TensorInfo): TensorInfo {
  const transposeKernel = tf.getKernel(tf.Transpose, BACKEND) as KernelConfig | undefined;
  if (transposeKernel === undefined) throw new Error('wasm-kernels: wasm Transpose kernel not registered');
  const rank = x.shape.length;
  const perm = x.shape.map((_, i) => i);
  perm[rank - 2] = rank - 1;
  perm[rank - 1] = rank - 2;
  return transposeKernel.kernelFunc({ inputs: { x }, backend, attrs: { perm } }) as TensorInfo;
}

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
 * Every BatchMatMul as untransposed batch-1 XNNPACK calls: stock wasm takes its naive
 * C++ loop (~13x slower) for any transposed or batched operand.
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

  const out = backend.makeOutput([...outerOut, m, n], 'float32');
  if (batchOut * m * n === 0) return out;
  if (k === 0) {
    backend.typedArrayFromHeap(out).fill(0);
    return out;
  }

  const temps: TensorInfo[] = [];
  try {
    // Physically transposing costs O(size) and unlocks XNNPACK, which is far
    // cheaper than the O(M*N*K) naive loop taken for transposed operands.
    let aP = a;
    let bP = b;
    if (transposeA) { aP = transposeLastTwo(backend, a); temps.push(aP); }
    if (transposeB) { bP = transposeLastTwo(backend, b); temps.push(bP); }
    const aData = tensorData(backend, aP);
    const bData = tensorData(backend, bP);
    const outData = tensorData(backend, out);

    if (batchB === 1) {
      // b broadcasts over every batch of a, so a's batches are just more rows.
      const wasm = backend.wasm;
      if (mayCacheOnB(bP, k)) {
        fastMatMul(backend, aData.id, bData.id, outData.id, batchA * m, k, n);
      } else {
        const bId = backend.dataIdNextNumber++;
        wasm.tfjs.registerTensor(bId, k * n, bData.memoryOffset);
        try {
          fastMatMul(backend, aData.id, bId, outData.id, batchA * m, k, n);
        } finally {
          wasm.tfjs.disposeData(bId);
        }
      }
      return out;
    }

    const [idxA, idxB] = batchIndexMaps(outerA, outerB, outerOut);
    const aStride = m * k * 4;
    const bStride = k * n * 4;
    const oStride = m * n * 4;
    const wasm = backend.wasm;
    for (let i = 0; i < batchOut; i++) {
      // Register per-batch views as tensors of their own. Ids come from the
      // backend's counter so they can never collide with real tensors; the
      // XNNPACK operator cached for a b id is freed only when that id is
      // disposed, so every view id is disposed right after the call.
      const aId = backend.dataIdNextNumber++;
      const bId = backend.dataIdNextNumber++;
      const oId = backend.dataIdNextNumber++;
      wasm.tfjs.registerTensor(aId, m * k, aData.memoryOffset + idxA[i]! * aStride);
      wasm.tfjs.registerTensor(bId, k * n, bData.memoryOffset + idxB[i]! * bStride);
      wasm.tfjs.registerTensor(oId, m * n, outData.memoryOffset + i * oStride);
      try {
        fastMatMul(backend, aId, bId, oId, m, k, n);
      } finally {
        wasm.tfjs.disposeData(aId);
        wasm.tfjs.disposeData(bId);
        wasm.tfjs.disposeData(oId);
      }
    }
    return out;
  } catch (e) {
    backend.disposeData(out.dataId);
    throw e;
  } finally {
    for (const t of temps) backend.disposeData(t.dataId);
  }
};
