import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import type { WasmBackendLike, WasmModule } from './backend-types.js';

/** Our wasm SIMD kernels (src/backend/simd/), bound to one tfjs wasm backend's heap; pointers are byte offsets into it. */
export interface SimdKernels {
  /**
   * C[M,N] = op(A)[M,K] * op(B)[K,N]; element (i,k) of op(A) is at a + 4*(i*aRowStride +
   * k*aInnerStride), (k,j) of op(B) at b + 4*(k*bInnerStride + j*bColStride), and C is
   * row-major with N columns.
   */
  gemm(m: number, n: number, k: number, a: number, aRowStride: number, aInnerStride: number,
      b: number, bInnerStride: number, bColStride: number, c: number): void;
  geluForward(x: number, out: number, size: number): void;
  geluBackward(dy: number, x: number, dx: number, size: number): void;
  /** out = x * mask, the mask drawn from the counter stream (state0, threshold) of `dropoutStream`. */
  dropout(x: number, out: number, size: number, state0: number, threshold: number, keep: number): void;
  layerNormForward(x: number, gamma: number, beta: number, out: number, rows: number, width: number, epsilon: number): void;
  layerNormBackward(dy: number, x: number, gamma: number, dx: number, dGamma: number, dBeta: number,
      rows: number, width: number, epsilon: number): void;
  softmaxCrossEntropy(logits: number, labels: number, loss: number, probs: number, rows: number, vocab: number): void;
  softmaxCrossEntropyBackward(probs: number, labels: number, dLoss: number, dLogits: number, rows: number, vocab: number): void;
}

interface KernelExports {
  gemm(m: number, n: number, k: number, a: number, sAi: number, sAk: number,
      b: number, sBk: number, sBj: number, c: number, ldc: number, scratch: number): void;
  scratchBytes(): number;
  geluForward(x: number, out: number, n: number, scratch: number): void;
  geluBackward(dy: number, x: number, dx: number, n: number, scratch: number): void;
  dropout(x: number, out: number, n: number, state0: number, threshold: number, keep: number, scratch: number): void;
  layerNormForward(x: number, gamma: number, beta: number, out: number, rows: number, w: number, epsilon: number): void;
  layerNormBackward(dy: number, x: number, gamma: number, dx: number, dGamma: number, dBeta: number,
      rows: number, w: number, epsilon: number): void;
  softmaxCrossEntropy(logits: number, labels: number, loss: number, probs: number, rows: number, v: number): void;
  softmaxCrossEntropyBackward(probs: number, labels: number, dLoss: number, dLogits: number, rows: number, v: number): void;
}

// Built next to this file's directory in dist/ by `npm run build:simd`.
const KERNELS_WASM = new URL('../simd/kernels.wasm', import.meta.url);
const KERNELS_FMA_WASM = new URL('../simd/kernels-fma.wasm', import.meta.url);

let compiled: WebAssembly.Module | undefined;

/** The compiled kernels module: also instantiated on memories of their own (the optimizer's, src/optim/adafactor-kernel.ts). */
export function kernelModule(): WebAssembly.Module {
  if (compiled === undefined) {
    let bytes: Uint8Array<ArrayBuffer>;
    try {
      bytes = new Uint8Array(readFileSync(KERNELS_WASM));
    } catch (e) {
      throw new Error(`wasm-kernels: cannot read ${KERNELS_WASM.pathname} (${(e as Error).message}); run \`npm run build\``);
    }
    try {
      compiled = new WebAssembly.Module(bytes);
    } catch (e) {
      throw new Error(`wasm-kernels: cannot compile ${KERNELS_WASM.pathname}: ${(e as Error).message} (it needs WebAssembly SIMD, in Node since 16.4)`);
    }
  }
  return compiled;
}

let fmaCompiled: WebAssembly.Module | null | undefined;

/**
 * The kernels built with relaxed SIMD (kernels-fma.wasm: gemm's products are fused
 * multiply-adds, 25-40% more GFLOPS here), or null where this runtime cannot compile them
 * or they are missing. Only the model's kernels run from it: a relaxed multiply-add rounds
 * once or twice depending on the machine, which the model's forward and backward pass may do
 * (each replica's gradients are summed once, then every replica applies the same update),
 * while the optimizer's passes must give the same bits on every replica: they run from
 * kernelModule().
 */
export function fmaKernelModule(): WebAssembly.Module | null {
  if (fmaCompiled === undefined) {
    fmaCompiled = null;
    let bytes: Uint8Array<ArrayBuffer> | undefined;
    try {
      bytes = new Uint8Array(readFileSync(KERNELS_FMA_WASM));
    } catch {
      // an older build without it: the plain kernels serve
    }
    // Node 20 compiles relaxed SIMD (a standard wasm feature) behind this V8 flag, on by
    // default from Node 22: the one place the program sets a V8 flag (the build script sets
    // it too), and only where the module does not compile without it
    if (bytes && !WebAssembly.validate(bytes)) setFlagsFromString('--experimental-wasm-relaxed-simd');
    if (bytes && WebAssembly.validate(bytes)) fmaCompiled = new WebAssembly.Module(bytes);
  }
  return fmaCompiled;
}

/** Whether the model's products use fused multiply-adds (fmaKernelModule), for reports. */
export function modelKernelsFused(): boolean {
  return fmaKernelModule() !== null;
}

// One instance per emscripten module: it imports that module's memory.
const instances = new WeakMap<WasmModule, SimdKernels>();

export function simdKernels(backend: WasmBackendLike): SimdKernels {
  let kernels = instances.get(backend.wasm);
  if (kernels === undefined) {
    const memory = backend.wasm.asm?.memory;
    if (!(memory instanceof WebAssembly.Memory)) {
      throw new Error('wasm-kernels: this tfjs-backend-wasm build does not expose its memory (asm.memory); expected the non-threaded 4.22 build');
    }
    const exports = new WebAssembly.Instance(fmaKernelModule() ?? kernelModule(), { env: { memory } }).exports as unknown as KernelExports;
    // Lent for the module's lifetime (kernels run one at a time): malloc never hands it out again.
    const scratch = backend.wasm._malloc(exports.scratchBytes());
    if (scratch === 0) throw new Error('wasm-kernels: out of wasm memory for the kernels\' scratch');
    kernels = {
      gemm: (m, n, k, a, sAi, sAk, b, sBk, sBj, c) => exports.gemm(m, n, k, a, sAi, sAk, b, sBk, sBj, c, n, scratch),
      geluForward: (x, out, size) => exports.geluForward(x, out, size, scratch),
      geluBackward: (dy, x, dx, size) => exports.geluBackward(dy, x, dx, size, scratch),
      dropout: (x, out, size, state0, threshold, keep) => exports.dropout(x, out, size, state0, threshold, keep, scratch),
      // these need no scratch: the exports themselves
      layerNormForward: exports.layerNormForward,
      layerNormBackward: exports.layerNormBackward,
      softmaxCrossEntropy: exports.softmaxCrossEntropy,
      softmaxCrossEntropyBackward: exports.softmaxCrossEntropyBackward,
    };
    instances.set(backend.wasm, kernels);
  }
  return kernels;
}
