// AssemblyScript, built with gemm.ts into dist/src/backend/simd/kernels.wasm.
//
// Seeded inverted dropout: out[i] = x[i] * (z_i >= threshold ? keep : 0), z_i the
// splitmix32 output for counter state0 + (i+1) * golden. It is bit for bit the
// mask of seededDropout in src/model/layers/base.ts, so every backend drops the
// same units, and the backward pass (and a recomputed block) can replay it from
// (seed, salt) instead of keeping it. Each lane computes its own counter, so the
// mask is generated four units at a time without a sequential dependency.

const GOLDEN: i32 = 0x9e3779b9;

@inline function mix(state: v128): v128 {
  let z = state;
  z = i32x4.mul(v128.xor(z, i32x4.shr_u(z, 16)), i32x4.splat(0x85ebca6b));
  z = i32x4.mul(v128.xor(z, i32x4.shr_u(z, 13)), i32x4.splat(0xc2b2ae35));
  return v128.xor(z, i32x4.shr_u(z, 16));
}

/** `threshold` is an unsigned 32-bit integer (rate * 2^32); `scratch` lends 16 bytes. */
export function dropout(x: usize, out: usize, n: i32, state0: u32, threshold: u32, keep: f32, scratch: usize): void {
  const step = i32x4.splat(GOLDEN * 4);
  let state = i32x4.add(i32x4.splat(<i32>state0), i32x4(GOLDEN, GOLDEN * 2, GOLDEN * 3, GOLDEN * 4));
  const limit = i32x4.splat(<i32>threshold);
  const scale = f32x4.splat(keep);
  const whole = n & ~3;
  for (let i = 0; i < whole; i += 4) {
    const o = <usize>i << 2;
    const kept = i32x4.ge_u(mix(state), limit);
    // x times the mask value (keep or 0), as the tfjs path multiplies: NaN stays NaN
    v128.store(out + o, f32x4.mul(v128.load(x + o), v128.and(scale, kept)));
    state = i32x4.add(state, step);
  }
  if (whole < n) {
    const bytes = <usize>(n - whole) << 2;
    v128.store(scratch, f32x4.splat(0));
    memory.copy(scratch, x + (<usize>whole << 2), bytes);
    const kept = i32x4.ge_u(mix(state), limit);
    v128.store(scratch, f32x4.mul(v128.load(scratch), v128.and(scale, kept)));
    memory.copy(out + (<usize>whole << 2), scratch, bytes);
  }
}
