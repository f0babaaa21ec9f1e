// AssemblyScript: math shared by the kernels in this folder. AssemblyScript's own
// Mathf.log/exp read lookup tables from static data, which this module must not have
// (it runs on the tfjs heap, see ../gemm.ts), so these are table-free.

const LN2_HI: f32 = 0.693359375;
const LN2_LO: f32 = -2.12194440e-4;
const LOG2E: f32 = 1.44269504;

/** exp(y) for y <= 0; 0 below -87 (where float32 underflows anyway). */
@inline export function expNonPositive(y: v128): v128 {
  const clamped = f32x4.max(y, f32x4.splat(-87.0));
  const n = f32x4.nearest(f32x4.mul(clamped, f32x4.splat(LOG2E)));
  let r = f32x4.sub(clamped, f32x4.mul(n, f32x4.splat(LN2_HI)));
  r = f32x4.sub(r, f32x4.mul(n, f32x4.splat(LN2_LO)));
  // Cephes expf polynomial on |r| <= ln2/2
  let p = f32x4.splat(1.9875691500e-4);
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(1.3981999507e-3));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(8.3334519073e-3));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(4.1665795894e-2));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(1.6666665459e-1));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(5.0000001201e-1));
  const r2 = f32x4.mul(r, r);
  p = f32x4.add(f32x4.add(f32x4.mul(p, r2), r), f32x4.splat(1.0));
  const scale = i32x4.shl(i32x4.add(i32x4.trunc_sat_f32x4_s(n), i32x4.splat(127)), 23);
  const value = f32x4.mul(p, scale);
  return v128.and(value, f32x4.gt(y, f32x4.splat(-87.0)));
}

/** ln(x) for finite x > 0, to float32 precision (through f64). */
export function logPositive(x: f32): f32 {
  const bits = reinterpret<u32>(x);
  let e = <i32>((bits >> 23) & 0xff) - 127;
  let m = <f64>reinterpret<f32>((bits & 0x7fffff) | 0x3f800000);
  if (e == -127) {
    // subnormal: normalise through a multiply by 2^23
    const scaled = reinterpret<u32>(x * <f32>8388608.0);
    e = <i32>((scaled >> 23) & 0xff) - 127 - 23;
    m = <f64>reinterpret<f32>((scaled & 0x7fffff) | 0x3f800000);
  }
  if (m > 1.4142135623730951) {
    m *= 0.5;
    e += 1;
  }
  // ln m = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.172
  const s = (m - 1.0) / (m + 1.0);
  const s2 = s * s;
  const series = s * (2.0 + s2 * (2.0 / 3.0 + s2 * (2.0 / 5.0 + s2 * (2.0 / 7.0 + s2 * (2.0 / 9.0 + s2 * (2.0 / 11.0))))));
  return <f32>(<f64>e * 0.6931471805599453 + series);
}
