/**
 * IEEE binary16 conversion for gradient compression. float32 -> float16 rounds to nearest,
 * ties to even (overflow to +-Infinity, NaN stays NaN); float16 -> float32 is exact.
 *
 * Error of one rounding: |fl16(x) - x| <= 2^-11 |x| for normal results, <= 2^-25 for results
 * below 2^-14 (subnormals); |x| >= 65520 becomes Infinity.
 */

const f32 = new Float32Array(1);
const u32 = new Int32Array(f32.buffer);

/** Rounds the float32 bit pattern `u` (as an int32) to a float16 bit pattern. */
function bitsToHalf(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a >= 0x7f800000) return sign | (a > 0x7f800000 ? 0x7e00 : 0x7c00); // NaN, Infinity
  if (a >= 0x477ff000) return sign | 0x7c00; // >= 65520 rounds past the largest half
  if (a >= 0x38800000) {
    // normal half: rebias the exponent (127 -> 15) and keep 10 of 23 mantissa bits; adding
    // 0xfff plus the kept mantissa's lowest bit before the shift rounds to nearest even
    // without a data-dependent branch (2-3x faster on random data), and a carry out of the
    // mantissa correctly bumps the exponent (F. Giesen's float_to_half_fast3_rtne)
    return sign | ((a - 0x38000000 + 0xfff + ((a >> 13) & 1)) >> 13);
  }
  const e = a >>> 23;
  if (e < 102) return sign; // below 2^-25: rounds to zero (2^-25 itself ties to even, zero)
  // subnormal half: value / 2^-24 = m * 2^(e - 126), rounded
  const m = (a & 0x7fffff) | 0x800000;
  const shift = 126 - e;
  let q = m >>> shift;
  const rem = m & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && q & 1)) q++;
  return sign | q;
}

export function toHalf(x: number): number {
  f32[0] = x;
  return bitsToHalf(u32[0]!);
}

let table: Float32Array | undefined;

/** All 65536 halves as floats: decoding is one lookup. */
function halfTable(): Float32Array {
  if (!table) {
    table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1;
      const e = (h >>> 10) & 0x1f;
      const m = h & 0x3ff;
      table[h] = e === 0 ? sign * m * 2 ** -24 : e === 31 ? (m ? NaN : sign * Infinity) : sign * (1 + m / 1024) * 2 ** (e - 15);
    }
  }
  return table;
}

export function fromHalf(h: number): number {
  return halfTable()[h & 0xffff]!;
}

/** out[i] = fl16(src[i]) as bits. */
export function encodeHalf(src: Float32Array, out: Uint16Array): void {
  const bits = new Int32Array(src.buffer, src.byteOffset, src.length); // int32: no boxing of values >= 2^31
  for (let i = 0; i < src.length; i++) out[i] = bitsToHalf(bits[i]!);
}

/** dst[i] += half(src[i]), accumulated in float32. */
export function addHalf(dst: Float32Array, src: Uint16Array): void {
  const t = halfTable();
  for (let i = 0; i < dst.length; i++) dst[i] += t[src[i]!]!;
}

/** dst[i] = half(src[i]). */
export function copyHalf(dst: Float32Array, src: Uint16Array): void {
  const t = halfTable();
  for (let i = 0; i < dst.length; i++) dst[i] = t[src[i]!]!;
}

/** x[i] = fl16(x[i]) in place: the owner of a reduced segment rounds it as every other rank receives it. */
export function roundHalfInPlace(x: Float32Array): void {
  const t = halfTable();
  const bits = new Int32Array(x.buffer, x.byteOffset, x.length);
  for (let i = 0; i < x.length; i++) x[i] = t[bitsToHalf(bits[i]!)]!;
}

/** The largest finite half. */
export const HALF_MAX = 65504;
