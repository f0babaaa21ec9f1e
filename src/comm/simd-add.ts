/**
 * dst += src for float32 chunks with WebAssembly SIMD (f32x4): the reduce-scatter's adds, about
 * three times the speed of a JavaScript loop here even with the copy of dst in and out.
 * Received payloads are read straight into the module's memory, so the source needs no copy;
 * a destination allocated as a ReductionBuffer lives in a module's memory too, and is added
 * into in place. The module is 112 bytes, assembled below rather than built, so there is no
 * build step.
 */

import { registerSimdMemory } from '../backend/buffer-passes.js';

const leb = (n: number): number[] => {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
};
const section = (id: number, bytes: number[]): number[] => [id, ...leb(bytes.length), ...bytes];
const name = (s: string): number[] => [s.length, ...Buffer.from(s, 'ascii')];

// (func $add (param $dst i32) (param $src i32) (param $n i32) (local $end i32)
//   end = dst + n * 4; while (dst < end) { v128.store(dst, f32x4.add(v128.load(dst), v128.load(src))); dst += 16; src += 16 })
// n must be a multiple of 4; byte offsets need no alignment.
const BODY = [
  1, 1, 0x7f,
  0x20, 0, 0x20, 2, 0x41, 2, 0x74, 0x6a, 0x21, 3,
  0x02, 0x40, 0x03, 0x40,
  0x20, 0, 0x20, 3, 0x4f, 0x0d, 1,
  0x20, 0, 0x20, 0, 0xfd, 0x00, 0x00, 0x00, 0x20, 1, 0xfd, 0x00, 0x00, 0x00, 0xfd, 0xe4, 0x01, 0xfd, 0x0b, 0x00, 0x00,
  0x20, 0, 0x41, 16, 0x6a, 0x21, 0, 0x20, 1, 0x41, 16, 0x6a, 0x21, 1,
  0x0c, 0, 0x0b, 0x0b, 0x0b,
];
const MODULE_BYTES = new Uint8Array([
  0, 0x61, 0x73, 0x6d, 1, 0, 0, 0,
  ...section(1, [1, 0x60, 3, 0x7f, 0x7f, 0x7f, 0]), // type: (i32, i32, i32) -> ()
  ...section(3, [1, 0]), // one function of that type
  ...section(5, [1, 0, 1]), // memory, 1 page to start
  ...section(7, [2, ...name('add'), 0, 0, ...name('memory'), 2, 0]),
  ...section(10, [1, ...leb(BODY.length), ...BODY]),
]);

let compiled: WebAssembly.Module | null | undefined;

function module(): WebAssembly.Module | null {
  if (compiled === undefined) {
    try {
      compiled = new WebAssembly.Module(MODULE_BYTES);
    } catch {
      compiled = null; // no SIMD in this engine: plain loops
    }
  }
  return compiled;
}

const PAGE = 65536;

type AddFunction = (dst: number, src: number, n: number) => void;

/** An instance of the add module whose memory holds `bytes` (from offset 0); undefined without SIMD. */
function instantiate(bytes: number): { memory: WebAssembly.Memory; add: AddFunction } | undefined {
  const m = module();
  if (!m) return undefined;
  const instance = new WebAssembly.Instance(m);
  const memory = instance.exports.memory as WebAssembly.Memory;
  memory.grow(Math.ceil(bytes / PAGE)); // once: growing would detach every view of the memory
  return { memory, add: instance.exports.add as AddFunction };
}

const reductionBuffers = new WeakMap<ArrayBufferLike, ReductionBuffer>();

/**
 * Float32 memory that an all-reduce adds into without copying it: it lives in the memory of an
 * add module, beside room for one received chunk. Allocate gradient buffers this way
 * (Communicator.allocate) and each reduce-scatter chunk is read into `landing` by the socket
 * and added in place by SIMD, where another buffer is copied into the module and back.
 */
export class ReductionBuffer {
  readonly data: Float32Array;
  /** Where a received chunk of at most `landing.length` bytes is read before it is added. */
  readonly landing: Buffer;
  readonly #add: AddFunction;

  private constructor(elements: number, landingBytes: number, wasm: { memory: WebAssembly.Memory; add: AddFunction }) {
    const landing = Math.ceil(landingBytes / 16) * 16;
    this.landing = Buffer.from(wasm.memory.buffer, 0, landingBytes);
    this.data = new Float32Array(wasm.memory.buffer, landing, elements);
    this.#add = wasm.add;
    reductionBuffers.set(wasm.memory.buffer, this);
  }

  /** A zeroed buffer of `elements` floats; a plain Float32Array where the engine has no WebAssembly SIMD. */
  static allocate(elements: number, landingBytes: number): Float32Array {
    if (!Number.isSafeInteger(elements) || elements < 0) throw new Error(`cannot allocate ${elements} elements`);
    const landing = Math.ceil(landingBytes / 16) * 16;
    const wasm = instantiate(landing + elements * 4);
    if (wasm) registerSimdMemory(wasm.memory);
    return wasm ? new ReductionBuffer(elements, landingBytes, wasm).data : new Float32Array(elements);
  }

  /** The ReductionBuffer every one of `views` lies in, if they share one. */
  static holding(views: readonly Float32Array[]): ReductionBuffer | undefined {
    const first = views[0] && reductionBuffers.get(views[0].buffer);
    return first && views.every((v) => v.buffer === views[0]!.buffer) ? first : undefined;
  }

  /** dst[i] += the floats at landing byte offset `at`; dst must be a view of this buffer. */
  addLanded(dst: Float32Array, at: number): void {
    const n = dst.length;
    const simd = n & ~3;
    if (simd > 0) this.#add(dst.byteOffset, at, simd);
    if (simd < n) {
      const src = new Float32Array(this.landing.buffer, at + simd * 4, n - simd);
      for (let i = simd; i < n; i++) dst[i] += src[i - simd]!;
    }
  }
}

export class ChunkAdder {
  /** Where received messages are assembled (see MessageReader). */
  readonly assembly: Buffer;
  readonly #add: AddFunction | undefined;
  readonly #scratch: Float32Array | undefined;
  readonly #scratchOffset: number;

  constructor(maxMessageBytes: number, maxChunkElements: number) {
    const assemblyBytes = Math.ceil(maxMessageBytes / 16) * 16;
    const wasm = instantiate(assemblyBytes + maxChunkElements * 4);
    this.#scratchOffset = assemblyBytes;
    if (!wasm) {
      this.assembly = Buffer.allocUnsafeSlow(maxMessageBytes);
      return;
    }
    this.assembly = Buffer.from(wasm.memory.buffer, 0, maxMessageBytes);
    this.#scratch = new Float32Array(wasm.memory.buffer, assemblyBytes, maxChunkElements);
    this.#add = wasm.add;
  }

  /** dst[i] += src[i], where src is a float32 view (of the assembly buffer when it can be). */
  add(dst: Float32Array, src: Float32Array): void {
    const n = dst.length;
    const simd = n & ~3;
    if (this.#add && src.buffer === this.assembly.buffer && simd > 0) {
      const scratch = this.#scratch!.subarray(0, simd);
      scratch.set(dst.subarray(0, simd));
      this.#add(this.#scratchOffset, src.byteOffset, simd);
      dst.set(scratch, 0);
      for (let i = simd; i < n; i++) dst[i] += src[i]!;
      return;
    }
    for (let i = 0; i < n; i++) dst[i] += src[i]!;
  }
}
