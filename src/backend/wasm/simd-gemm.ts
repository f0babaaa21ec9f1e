import { readFileSync } from 'node:fs';
import type { WasmBackendLike, WasmModule } from './backend-types.js';

/**
 * C[M,N] = op(A)[M,K] * op(B)[K,N] on byte offsets into the backend's heap; element
 * (i,k) of op(A) is at a + 4*(i*aRowStride + k*aInnerStride), (k,j) of op(B) at
 * b + 4*(k*bInnerStride + j*bColStride), and C is row-major with N columns.
 */
export type SimdGemm = (m: number, n: number, k: number,
    a: number, aRowStride: number, aInnerStride: number,
    b: number, bInnerStride: number, bColStride: number, c: number) => void;

interface GemmExports {
  gemm(m: number, n: number, k: number, a: number, sAi: number, sAk: number,
      b: number, sBk: number, sBj: number, c: number, ldc: number, scratch: number): void;
  scratchBytes(): number;
}

// Next to this file in dist/ (src/backend/simd/gemm.ts, built by `npm run build:simd`).
const GEMM_WASM = new URL('../simd/gemm.wasm', import.meta.url);

let compiled: WebAssembly.Module | undefined;

function gemmModule(): WebAssembly.Module {
  if (compiled === undefined) {
    let bytes: Uint8Array<ArrayBuffer>;
    try {
      bytes = new Uint8Array(readFileSync(GEMM_WASM));
    } catch (e) {
      throw new Error(`wasm-kernels: cannot read ${GEMM_WASM.pathname} (${(e as Error).message}); run \`npm run build\``);
    }
    compiled = new WebAssembly.Module(bytes);
  }
  return compiled;
}

// One instance per emscripten module: it imports that module's memory.
const instances = new WeakMap<WasmModule, SimdGemm>();

export function simdGemm(backend: WasmBackendLike): SimdGemm {
  let gemm = instances.get(backend.wasm);
  if (gemm === undefined) {
    const memory = backend.wasm.asm.memory;
    const exports = new WebAssembly.Instance(gemmModule(), { env: { memory } }).exports as unknown as GemmExports;
    // Lent for the module's lifetime: the backend's malloc never hands it out again.
    const scratch = backend.wasm._malloc(exports.scratchBytes());
    if (scratch === 0) throw new Error('wasm-kernels: out of wasm memory for the matmul scratch');
    gemm = (m, n, k, a, sAi, sAk, b, sBk, sBj, c) => exports.gemm(m, n, k, a, sAi, sAk, b, sBk, sBj, c, n, scratch);
    instances.set(backend.wasm, gemm);
  }
  return gemm;
}
