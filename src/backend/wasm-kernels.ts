/**
 * Replacement kernels for the tfjs `wasm` backend (tfjs-backend-wasm 4.22).
 *
 * - UnsortedSegmentSum: missing on wasm. It is the gradient of `gather`, so
 *   without it nothing with an embedding lookup can train on wasm.
 * - BatchMatMul: stock wasm only reaches XNNPACK when neither operand is
 *   transposed and both batch sizes are 1; every other case (all backprop
 *   matmuls, attention) falls to a naive C++ loop that is ~13x slower. We
 *   reshape every case into untransposed batch-1 calls of the same C++ entry.
 * - Identity: stock wasm copies the buffer, and the engine clones every tensor
 *   it saves for backprop through Identity, doubling activation memory. We
 *   share the data with a refcount, as tfjs-backend-cpu does.
 *
 * This module deliberately does not import tfjs-backend-wasm: it only talks to
 * the kernel registry and to the backend object handed to kernel funcs.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';

export type WasmKernelFix = 'UnsortedSegmentSum' | 'BatchMatMul' | 'Identity';

export const ALL_WASM_KERNEL_FIXES: readonly WasmKernelFix[] = Object.freeze([
  'UnsortedSegmentSum',
  'BatchMatMul',
  'Identity',
] as const);

const BACKEND = 'wasm';

// ---------------------------------------------------------------------------
// The slice of BackendWasm (tfjs-backend-wasm/dist/backend_wasm.js) we rely on.

interface WasmTensorData {
  id: number;
  memoryOffset: number;
  shape: number[];
  dtype: tf.DataType;
  refCount: number;
}

type CwrapArgType = 'number' | 'array' | 'string';

interface WasmModule {
  tfjs: {
    registerTensor(id: number, size: number, memoryOffset: number): void;
    disposeData(id: number): void;
  };
  cwrap(name: string, returnType: null | 'number', argTypes: CwrapArgType[]):
      (...args: Array<number | boolean | Uint8Array>) => unknown;
  HEAPU8: Uint8Array;
}

interface WasmBackendLike {
  wasm: WasmModule;
  dataIdNextNumber: number;
  dataIdMap: { get(dataId: object): WasmTensorData | undefined };
  makeOutput(shape: number[], dtype: tf.DataType): TensorInfo;
  typedArrayFromHeap(t: TensorInfo): Float32Array | Int32Array | Uint8Array;
  disposeData(dataId: object, force?: boolean): boolean;
  incRef(dataId: object): void;
}

function tensorData(backend: WasmBackendLike, t: TensorInfo): WasmTensorData {
  const d = backend.dataIdMap.get(t.dataId);
  if (d === undefined) throw new Error('wasm-kernels: tensor data not found on the wasm backend');
  return d;
}

// ---------------------------------------------------------------------------
// UnsortedSegmentSum

const unsortedSegmentSum: KernelFunc = ({ inputs, backend: b, attrs }) => {
  const backend = b as WasmBackendLike;
  const x = inputs['x'] as TensorInfo;
  const segmentIds = inputs['segmentIds'] as TensorInfo;
  const numSegments = Number((attrs as { numSegments: number }).numSegments);
  if (x.dtype !== 'float32' && x.dtype !== 'int32') {
    throw new Error(`UnsortedSegmentSum on wasm supports float32/int32 x, got ${x.dtype}`);
  }
  if (segmentIds.dtype !== 'int32') {
    throw new Error(`UnsortedSegmentSum on wasm needs int32 segmentIds, got ${segmentIds.dtype}`);
  }
  const idsRank = segmentIds.shape.length;
  for (let i = 0; i < idsRank; i++) {
    if (segmentIds.shape[i] !== x.shape[i]) {
      throw new Error(`UnsortedSegmentSum: segmentIds shape [${segmentIds.shape}] ` +
          `must be a prefix of x shape [${x.shape}]`);
    }
  }
  const innerShape = x.shape.slice(idsRank);
  const inner = tf.util.sizeFromShape(innerShape);
  const n = tf.util.sizeFromShape(segmentIds.shape);

  const out = backend.makeOutput([numSegments, ...innerShape], x.dtype);
  // Views only after makeOutput: its malloc may grow (and detach) the heap.
  const outVals = backend.typedArrayFromHeap(out);
  // malloc'd memory is recycled, not zeroed.
  outVals.fill(0);
  if (n === 0 || inner === 0) return out;
  const xVals = backend.typedArrayFromHeap(x);
  const ids = backend.typedArrayFromHeap(segmentIds);
  for (let i = 0; i < n; i++) {
    const s = ids[i]!;
    // TF drops out-of-range ids instead of failing.
    if (s < 0 || s >= numSegments) continue;
    const dst = s * inner;
    const src = i * inner;
    for (let j = 0; j < inner; j++) outVals[dst + j]! += xVals[src + j]!;
  }
  return out;
};

// ---------------------------------------------------------------------------
// BatchMatMul

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

const batchMatMul: KernelFunc = ({ inputs, backend: bk, attrs }) => {
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

// ---------------------------------------------------------------------------
// Identity

const identity: KernelFunc = ({ inputs, backend: b }) => {
  const backend = b as WasmBackendLike;
  const x = inputs['x'] as TensorInfo;
  backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
};

// ---------------------------------------------------------------------------
// Registration

const KERNEL_NAME: Record<WasmKernelFix, string> = {
  UnsortedSegmentSum: tf.UnsortedSegmentSum,
  BatchMatMul: tf.BatchMatMul,
  Identity: tf.Identity,
};

const OUR_KERNEL: Record<WasmKernelFix, KernelFunc> = {
  UnsortedSegmentSum: unsortedSegmentSum,
  BatchMatMul: batchMatMul,
  Identity: identity,
};

/** fix -> stock config it displaced (undefined when wasm had none). */
const displaced = new Map<WasmKernelFix, KernelConfig | undefined>();

export function installWasmKernelFixes(fixes: readonly WasmKernelFix[] = ALL_WASM_KERNEL_FIXES): void {
  for (const fix of fixes) {
    if (displaced.has(fix)) continue;
    const name = KERNEL_NAME[fix];
    if (name === undefined) throw new Error(`Unknown wasm kernel fix '${String(fix)}'`);
    const stock = tf.getKernel(name, BACKEND) as KernelConfig | undefined;
    // registerKernel warns (and keeps going) over an existing entry.
    if (stock !== undefined) tf.unregisterKernel(name, BACKEND);
    tf.registerKernel({ kernelName: name, backendName: BACKEND, kernelFunc: OUR_KERNEL[fix] });
    displaced.set(fix, stock);
  }
}

export function uninstallWasmKernelFixes(): void {
  // Only touch the live backend if it already exists: tf.findBackend would
  // initialize it as a side effect.
  const live = (tf.engine().registry as Record<string, tf.KernelBackend | undefined>)[BACKEND];
  for (const [fix, stock] of displaced) {
    const name = KERNEL_NAME[fix];
    if (tf.getKernel(name, BACKEND) !== undefined) tf.unregisterKernel(name, BACKEND);
    if (stock !== undefined) {
      tf.registerKernel(stock);
      // The engine runs setupFuncs only in setBackend; if we were installed
      // before the backend first started, the stock setup never ran.
      if (live !== undefined && stock.setupFunc !== undefined) stock.setupFunc(live);
    }
  }
  displaced.clear();
}

export function installedWasmKernelFixes(): WasmKernelFix[] {
  return ALL_WASM_KERNEL_FIXES.filter((f) => displaced.has(f));
}
