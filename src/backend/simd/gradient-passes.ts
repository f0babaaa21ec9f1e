// AssemblyScript, built with gemm.ts into dist/src/backend/simd/kernels.wasm.
//
// The passes a training step makes over all its host gradients (src/train/trainer.ts): the
// sum of a worker's claimed pieces, then after the all-reduce the sum of squares for the
// global norm and the scaling by 1 / targets and the clipping factor. They run on the
// memory the gradients already live in (a communicator's reduction buffer,
// src/comm/simd-add.ts). All are bit for bit the JavaScript loops of
// src/backend/buffer-passes.ts: the squares and the products are float64, four lane sums
// are kept (the tail goes to the first) and added left to right, each product is rounded
// once to float32, and the adds are float32.

/** The sum of x^2 over the n floats at x. */
export function sumOfSquares(x: usize, n: i32): f64 {
  const whole = n & ~3;
  let low = f64x2.splat(0);
  let high = f64x2.splat(0);
  for (let i = 0; i < whole; i += 4) {
    const v = v128.load(x + (<usize>i << 2));
    const a = f64x2.promote_low_f32x4(v);
    const b = f64x2.promote_low_f32x4(v128.shuffle<u32>(v, v, 2, 3, 0, 1));
    low = f64x2.add(low, f64x2.mul(a, a));
    high = f64x2.add(high, f64x2.mul(b, b));
  }
  let s0 = f64x2.extract_lane(low, 0);
  for (let i = whole; i < n; i++) {
    const y = <f64>load<f32>(x + (<usize>i << 2));
    s0 += y * y;
  }
  return s0 + f64x2.extract_lane(low, 1) + f64x2.extract_lane(high, 0) + f64x2.extract_lane(high, 1);
}

/** x[i] = x[i] * factor for the n floats at x, the product taken in float64. */
export function scaleBy(x: usize, n: i32, factor: f64): void {
  const whole = n & ~3;
  const f = f64x2.splat(factor);
  for (let i = 0; i < whole; i += 4) {
    const at = x + (<usize>i << 2);
    const v = v128.load(at);
    const low = f32x4.demote_f64x2_zero(f64x2.mul(f64x2.promote_low_f32x4(v), f));
    const high = f32x4.demote_f64x2_zero(f64x2.mul(f64x2.promote_low_f32x4(v128.shuffle<u32>(v, v, 2, 3, 0, 1)), f));
    v128.store(at, v128.shuffle<u64>(low, high, 0, 2));
  }
  for (let i = whole; i < n; i++) {
    const at = x + (<usize>i << 2);
    store<f32>(at, <f32>(<f64>load<f32>(at) * factor));
  }
}

/** dst[i] += src[i] for the n floats at dst and src (a worker's claimed pieces, added up). */
export function addTo(dst: usize, src: usize, n: i32): void {
  const whole = n & ~3;
  for (let i = 0; i < whole; i += 4) {
    const at = dst + (<usize>i << 2);
    v128.store(at, f32x4.add(v128.load(at), v128.load(src + (<usize>i << 2))));
  }
  for (let i = whole; i < n; i++) {
    const at = dst + (<usize>i << 2);
    store<f32>(at, load<f32>(at) + load<f32>(src + (<usize>i << 2)));
  }
}
