// AssemblyScript, built with gemm.ts into dist/src/backend/simd/kernels.wasm.
//
// Exact GELU, x * Phi(x), and its gradient dy * (Phi(x) + x * phi(x)), in one pass
// each over wasm SIMD. As tfjs ops the erf formula is some twenty kernels over the
// [batch, seq, 4H] activations, each a full pass through memory; here it is one.
// erf is Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, the formula of the
// composite path it replaces); exp is a range-reduced polynomial (relative error
// about 2e-7 on the range used here).

import { expNonPositive } from './lib/math';

const ERF_P: f32 = 0.3275911;
const A1: f32 = 0.254829592;
const A2: f32 = -0.284496736;
const A3: f32 = 1.421413741;
const A4: f32 = -1.453152027;
const A5: f32 = 1.061405429;
const SQRT1_2: f32 = 0.70710678;
const INV_SQRT_2PI: f32 = 0.39894228;

/** exp(-x^2/2), which Phi and the GELU gradient share. */
@inline function gaussian(x: v128): v128 {
  return expNonPositive(f32x4.mul(f32x4.mul(x, x), f32x4.splat(-0.5)));
}

/** Phi(x), given gauss = exp(-x^2/2). */
@inline function normalCdf(x: v128, gauss: v128): v128 {
  const z = f32x4.mul(f32x4.abs(x), f32x4.splat(SQRT1_2));
  const t = f32x4.div(f32x4.splat(1.0), f32x4.add(f32x4.splat(1.0), f32x4.mul(z, f32x4.splat(ERF_P))));
  let poly = f32x4.mul(t, f32x4.splat(A5));
  poly = f32x4.mul(f32x4.add(poly, f32x4.splat(A4)), t);
  poly = f32x4.mul(f32x4.add(poly, f32x4.splat(A3)), t);
  poly = f32x4.mul(f32x4.add(poly, f32x4.splat(A2)), t);
  poly = f32x4.mul(f32x4.add(poly, f32x4.splat(A1)), t);
  const erfAbs = f32x4.sub(f32x4.splat(1.0), f32x4.mul(poly, gauss));
  // erf(x/sqrt2) carries the sign of x
  const erf = v128.or(erfAbs, v128.and(x, i32x4.splat(0x80000000)));
  return f32x4.add(f32x4.splat(0.5), f32x4.mul(erf, f32x4.splat(0.5)));
}

@inline function gelu(v: v128): v128 {
  return f32x4.mul(v, normalCdf(v, gaussian(v)));
}

@inline function geluDerivative(v: v128): v128 {
  const gauss = gaussian(v);
  return f32x4.add(normalCdf(v, gauss), f32x4.mul(f32x4.mul(v, f32x4.splat(INV_SQRT_2PI)), gauss));
}

/** out[i] = gelu(x[i]) for n floats; `scratch` lends 32 bytes. */
export function geluForward(x: usize, out: usize, n: i32, scratch: usize): void {
  const whole = n & ~3;
  for (let i = 0; i < whole; i += 4) {
    const o = <usize>i << 2;
    v128.store(out + o, gelu(v128.load(x + o)));
  }
  if (whole < n) {
    const bytes = <usize>(n - whole) << 2;
    v128.store(scratch, f32x4.splat(0));
    memory.copy(scratch, x + (<usize>whole << 2), bytes);
    v128.store(scratch, gelu(v128.load(scratch)));
    memory.copy(out + (<usize>whole << 2), scratch, bytes);
  }
}

/** dx[i] = dy[i] * gelu'(x[i]) for n floats; `scratch` lends 32 bytes. */
export function geluBackward(dy: usize, x: usize, dx: usize, n: i32, scratch: usize): void {
  const whole = n & ~3;
  for (let i = 0; i < whole; i += 4) {
    const o = <usize>i << 2;
    v128.store(dx + o, f32x4.mul(v128.load(dy + o), geluDerivative(v128.load(x + o))));
  }
  if (whole < n) {
    const tailX = scratch;
    const tailDy = scratch + 16;
    const bytes = <usize>(n - whole) << 2;
    v128.store(tailX, f32x4.splat(0));
    v128.store(tailDy, f32x4.splat(0));
    memory.copy(tailX, x + (<usize>whole << 2), bytes);
    memory.copy(tailDy, dy + (<usize>whole << 2), bytes);
    v128.store(tailX, f32x4.mul(v128.load(tailDy), geluDerivative(v128.load(tailX))));
    memory.copy(dx + (<usize>whole << 2), tailX, bytes);
  }
}
