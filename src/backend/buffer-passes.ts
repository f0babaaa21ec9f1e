/**
 * Passes over every float32 host gradient of a step: the sum of squares (for the global
 * norm), the scaling, and the sum of a worker's pieces. A buffer that lies in a WebAssembly
 * memory registered here (the reduction buffer a communicator allocates,
 * src/comm/simd-add.ts) is passed over in place by the SIMD kernels of
 * src/backend/simd/gradient-passes.ts: 6 ms a pass over 8.8M gradients here, where the
 * loops below took 9-40 ms (9 once the JIT has optimized them, which a loop run once a step
 * may not be). Both give the same bits: a replica with SIMD and a single process without it
 * compute the same norm and the same scaled gradients.
 */
import { kernelModule } from './wasm/simd-module.js';

interface PassExports {
  sumOfSquares(x: number, n: number): number;
  scaleBy(x: number, n: number, factor: number): void;
  addTo(dst: number, src: number, n: number): void;
}

/** The kernels module instantiated on each registered memory, by the memory's buffer. */
const instancesOn = new WeakMap<ArrayBufferLike, WebAssembly.Exports>();
const passesOn = new WeakMap<ArrayBufferLike, PassExports>();

/**
 * Lets the SIMD passes run on views of `memory`. The memory must not grow afterwards (growing
 * replaces its buffer, and the views with it). Where the kernels cannot be instantiated (the
 * module not built, no SIMD) nothing changes: the loops run (`simdPassesFor` says which).
 */
export function registerSimdMemory(memory: WebAssembly.Memory): void {
  try {
    const instance = new WebAssembly.Instance(kernelModule(), { env: { memory } });
    instancesOn.set(memory.buffer, instance.exports);
    passesOn.set(memory.buffer, instance.exports as unknown as PassExports);
  } catch {
    // the loops run
  }
}

/**
 * The kernels module's exports on the registered memory every one of `views` lies in, if
 * they share one: other kernels of the module (the optimizer's, src/optim/adafactor-kernel.ts)
 * then run on the views in place, with byte offsets as pointers.
 */
export function simdKernelsOn(views: readonly Float32Array[]): WebAssembly.Exports | undefined {
  const buffer = views[0]?.buffer;
  if (!buffer || !views.every((v) => v.buffer === buffer)) return undefined;
  return instancesOn.get(buffer);
}

/** Whether `buffer`'s passes run on SIMD. */
export function simdPassesFor(buffer: Float32Array): boolean {
  return passesOn.has(buffer.buffer);
}

/**
 * The sum of the squares of `buffer`'s values, in float64: four lane sums (the tail goes to
 * the first), added left to right. The loop is unrolled so because the SIMD kernel's lanes
 * are; both run once a step over every gradient.
 */
export function sumOfSquares(buffer: Float32Array): number {
  const simd = passesOn.get(buffer.buffer);
  if (simd) return simd.sumOfSquares(buffer.byteOffset, buffer.length);
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  const end4 = buffer.length & ~3;
  let i = 0;
  for (; i < end4; i += 4) {
    const a = buffer[i]!;
    const b = buffer[i + 1]!;
    const c = buffer[i + 2]!;
    const d = buffer[i + 3]!;
    s0 += a * a;
    s1 += b * b;
    s2 += c * c;
    s3 += d * d;
  }
  for (; i < buffer.length; i++) s0 += buffer[i]! * buffer[i]!;
  return s0 + s1 + s2 + s3;
}

/** buffer[i] *= factor, the product in float64 rounded once to float32. */
export function scaleBy(buffer: Float32Array, factor: number): void {
  const simd = passesOn.get(buffer.buffer);
  if (simd) {
    simd.scaleBy(buffer.byteOffset, buffer.length, factor);
    return;
  }
  const end4 = buffer.length & ~3;
  let i = 0;
  for (; i < end4; i += 4) {
    buffer[i]! *= factor;
    buffer[i + 1]! *= factor;
    buffer[i + 2]! *= factor;
    buffer[i + 3]! *= factor;
  }
  for (; i < buffer.length; i++) buffer[i]! *= factor;
}

/**
 * dst[i] += src[i] (float32 adds, as tf.add's), where src may lie anywhere (the tfjs heap):
 * it is staged through `staging` in slices when dst and staging lie in one registered
 * memory, so the adds run on SIMD; otherwise a loop adds it.
 */
export function addInto(dst: Float32Array, src: Float32Array, staging: Float32Array | undefined): void {
  if (src.length !== dst.length) throw new Error(`adding ${src.length} values into ${dst.length}`);
  const simd = passesOn.get(dst.buffer);
  if (simd && staging && staging.buffer === dst.buffer && staging.length > 0) {
    for (let from = 0; from < dst.length; from += staging.length) {
      const n = Math.min(staging.length, dst.length - from);
      staging.set(src.subarray(from, from + n));
      simd.addTo(dst.byteOffset + 4 * from, staging.byteOffset, n);
    }
    return;
  }
  for (let i = 0; i < dst.length; i++) dst[i]! += src[i]!;
}
