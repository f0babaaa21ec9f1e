// AssemblyScript, compiled with the other kernels in this folder into
// dist/src/backend/simd/kernels.wasm by scripts/build-simd.mjs (part of `npm run build`);
// not part of the TypeScript program.
//
// Single-precision GEMM on wasm SIMD over the tfjs wasm backend's own memory:
// the module imports that memory, so it reads and writes tensors in place.
// tfjs-backend-wasm 4.22 reaches XNNPACK only for untransposed, unbatched
// products and repacks a fresh XNNPACK operator for every new right operand;
// training multiplies mostly transposed, fresh operands (all of backprop), so
// this kernel takes any strides and packs blocks itself (Goto-style: a KC x NC
// block of B and an MC x KC block of A, then a 4x8 register tile).
// It holds no state and no static data; the caller lends it `scratchBytes()`.

const MR = 4;

// c + a * b. Where the module is built with relaxed SIMD (kernels-fma.wasm, see
// scripts/build-simd.mjs) it is one fused multiply-add where the CPU has one: 25-40% more
// GFLOPS in the packed kernel here. Relaxed: it may round once (fused) or twice, by the
// machine, so only the model's products use it, never the optimizer's passes, whose results
// must be the same bits on every replica (src/backend/wasm/simd-module.ts).
@inline function madd(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  return f32x4.add(c, f32x4.mul(a, b));
}
const NR = 8;
const KC = 256;
const MC = 64;
const NC = 256;

// tile: a 4x8 scratch for edge tiles; ap: packed A panel [k][4]; bp: packed B panel [k][8]
@inline function micro(kc: i32, ap: usize, bp: usize, c: usize, ldc: i32, rows: i32, cols: i32, accumulate: bool, tile: usize): void {
  let c00 = f32x4.splat(0), c01 = f32x4.splat(0), c10 = f32x4.splat(0), c11 = f32x4.splat(0);
  let c20 = f32x4.splat(0), c21 = f32x4.splat(0), c30 = f32x4.splat(0), c31 = f32x4.splat(0);
  for (let k = 0; k < kc; k++) {
    const b0 = v128.load(bp), b1 = v128.load(bp, 16);
    let a = v128.load32_splat(ap);
    c00 = madd(a, b0, c00); c01 = madd(a, b1, c01);
    a = v128.load32_splat(ap, 4);
    c10 = madd(a, b0, c10); c11 = madd(a, b1, c11);
    a = v128.load32_splat(ap, 8);
    c20 = madd(a, b0, c20); c21 = madd(a, b1, c21);
    a = v128.load32_splat(ap, 12);
    c30 = madd(a, b0, c30); c31 = madd(a, b1, c31);
    ap += 16; bp += 32;
  }
  const row = <usize>ldc << 2;
  if (rows == MR && cols == NR) {
    let cp = c;
    if (accumulate) {
      v128.store(cp, f32x4.add(v128.load(cp), c00)); v128.store(cp, f32x4.add(v128.load(cp, 16), c01), 16); cp += row;
      v128.store(cp, f32x4.add(v128.load(cp), c10)); v128.store(cp, f32x4.add(v128.load(cp, 16), c11), 16); cp += row;
      v128.store(cp, f32x4.add(v128.load(cp), c20)); v128.store(cp, f32x4.add(v128.load(cp, 16), c21), 16); cp += row;
      v128.store(cp, f32x4.add(v128.load(cp), c30)); v128.store(cp, f32x4.add(v128.load(cp, 16), c31), 16);
    } else {
      v128.store(cp, c00); v128.store(cp, c01, 16); cp += row;
      v128.store(cp, c10); v128.store(cp, c11, 16); cp += row;
      v128.store(cp, c20); v128.store(cp, c21, 16); cp += row;
      v128.store(cp, c30); v128.store(cp, c31, 16);
    }
    return;
  }
  v128.store(tile, c00); v128.store(tile, c01, 16); v128.store(tile, c10, 32); v128.store(tile, c11, 48);
  v128.store(tile, c20, 64); v128.store(tile, c21, 80); v128.store(tile, c30, 96); v128.store(tile, c31, 112);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < cols; j++) {
      const dst = c + (<usize>(r * ldc + j) << 2);
      const v = load<f32>(tile + (<usize>(r * NR + j) << 2));
      store<f32>(dst, accumulate ? load<f32>(dst) + v : v);
    }
  }
}

// Four vectors of four consecutive elements (r0..r3, e.g. 4 rows at columns k..k+3) stored
// transposed: at p + i * step, element i of each. Packing a panel whose rows lie contiguous
// along K, in 4 x 4 blocks, instead of one scalar load and store per element: the A panels of
// every untransposed product and the B panels of every transposed one (the MLM head's
// logits pack the whole 21128 x 256 embedding this way for each piece).
@inline function storeTransposed4(p: usize, step: usize, r0: v128, r1: v128, r2: v128, r3: v128): void {
  const a = i32x4.shuffle(r0, r1, 0, 4, 1, 5);
  const b = i32x4.shuffle(r0, r1, 2, 6, 3, 7);
  const c = i32x4.shuffle(r2, r3, 0, 4, 1, 5);
  const d = i32x4.shuffle(r2, r3, 2, 6, 3, 7);
  v128.store(p, i32x4.shuffle(a, c, 0, 1, 4, 5));
  v128.store(p + step, i32x4.shuffle(a, c, 2, 3, 6, 7));
  v128.store(p + 2 * step, i32x4.shuffle(b, d, 0, 1, 4, 5));
  v128.store(p + 3 * step, i32x4.shuffle(b, d, 2, 3, 6, 7));
}

// A panel [k][width] of `width` rows (4 or 8) that lie contiguous along K, at r0, r0 + rs, ...:
// 4 x 4 transposes while 4 more values of K are left, one element at a time after.
@inline function packAlongK(p: usize, r0: usize, rs: usize, width: i32, kc: i32): void {
  const perK = <usize>width << 2;
  let k = 0;
  for (; k + 4 <= kc; k += 4) {
    const o = <usize>k << 2;
    for (let g = 0; g < width; g += 4) {
      const r = r0 + <usize>g * rs + o;
      storeTransposed4(p + (<usize>g << 2), perK, v128.load(r), v128.load(r + rs), v128.load(r + 2 * rs), v128.load(r + 3 * rs));
    }
    p += perK << 2;
  }
  for (; k < kc; k++) {
    const o = <usize>k << 2;
    for (let j = 0; j < width; j++) store<f32>(p + (<usize>j << 2), load<f32>(r0 + <usize>j * rs + o));
    p += perK;
  }
}

/** Bytes of scratch gemm needs. */
export function scratchBytes(): i32 {
  return (MC * KC + KC * NC + MR * NR) * 4;
}

/** At most this many rows of A take `dotRows` where it applies. */
const FEW_ROWS = 8;

// C[i,j] = dot(row i of A, column j of op(B)) where both lie contiguous along K (A untransposed,
// B transposed): no packing. For a few rows, packing B costs more than the product: the MLM
// head's logits of a short piece, 2 rows by the 21128 x 256 embedding, took 12.8 ms packed, nearly
// all of it gathering B's columns at a stride of K. Here B is read once, row by row. Sums run
// over K in two f32x4 accumulators (eight lanes, added at the end), the tail in order after.
function dotRows(M: i32, N: i32, K: i32, A: usize, sAi: i32, B: usize, sBj: i32, C: usize, ldc: i32): void {
  const eights = K & ~7;
  const fours = K & ~3;
  for (let j = 0; j < N; j++) {
    const b = B + (<usize>(j * sBj) << 2);
    for (let i = 0; i < M; i++) {
      const a = A + (<usize>(i * sAi) << 2);
      let s0 = f32x4.splat(0), s1 = f32x4.splat(0);
      let k = 0;
      for (; k < eights; k += 8) {
        const o = <usize>k << 2;
        s0 = madd(v128.load(a + o), v128.load(b + o), s0);
        s1 = madd(v128.load(a + o, 16), v128.load(b + o, 16), s1);
      }
      for (; k < fours; k += 4) {
        const o = <usize>k << 2;
        s0 = madd(v128.load(a + o), v128.load(b + o), s0);
      }
      const s = f32x4.add(s0, s1);
      let sum = f32x4.extract_lane(s, 0) + f32x4.extract_lane(s, 1) + f32x4.extract_lane(s, 2) + f32x4.extract_lane(s, 3);
      for (; k < K; k++) sum += load<f32>(a + (<usize>k << 2)) * load<f32>(b + (<usize>k << 2));
      store<f32>(C + (<usize>(i * ldc + j) << 2), sum);
    }
  }
}

/** `axpyRows` only while the rows of C it keeps adding into stay in the L1 cache (32 KiB). */
const AXPY_MAX_OUTPUT = 8192;

// C[i,:] = sum over k of A[i,k] times row k of B, where B's rows are contiguous (untransposed):
// no packing, B read once; the few rows of C stay in cache while every row of B is added in.
// Sums run over K in order, as the packed kernel's do within a block. The gradient of a short
// piece's hidden states through the MLM head, 2 rows by the 21128 x 256 embedding, is one.
function axpyRows(M: i32, N: i32, K: i32, A: usize, sAi: i32, B: usize, sBk: i32, C: usize, ldc: i32): void {
  const fours = N & ~3;
  for (let i = 0; i < M; i++) memory.fill(C + (<usize>(i * ldc) << 2), 0, <usize>N << 2);
  for (let k = 0; k < K; k++) {
    const b = B + (<usize>(k * sBk) << 2);
    for (let i = 0; i < M; i++) {
      const x = load<f32>(A + (<usize>(i * sAi + k) << 2));
      const a = f32x4.splat(x);
      const c = C + (<usize>(i * ldc) << 2);
      let j = 0;
      for (; j < fours; j += 4) {
        const o = <usize>j << 2;
        v128.store(c + o, madd(a, v128.load(b + o), v128.load(c + o)));
      }
      for (; j < N; j++) {
        const o = <usize>j << 2;
        store<f32>(c + o, load<f32>(c + o) + x * load<f32>(b + o));
      }
    }
  }
}

// C[M,N] = op(A) op(B): element (i,k) of op(A) at A + 4*(i*sAi + k*sAk); (k,j) of op(B) at B + 4*(k*sBk + j*sBj).
export function gemm(M: i32, N: i32, K: i32, A: usize, sAi: i32, sAk: i32, B: usize, sBk: i32, sBj: i32,
    C: usize, ldc: i32, scratch: usize): void {
  if (M <= FEW_ROWS && sAk == 1 && sBk == 1) {
    dotRows(M, N, K, A, sAi, B, sBj, C, ldc);
    return;
  }
  if (M <= FEW_ROWS && sAk == 1 && sBj == 1 && M * N <= AXPY_MAX_OUTPUT) {
    axpyRows(M, N, K, A, sAi, B, sBk, C, ldc);
    return;
  }
  const Ap = scratch;
  const Bp = Ap + <usize>(MC * KC * 4);
  const tile = Bp + <usize>(KC * NC * 4);
  for (let j0 = 0; j0 < N; j0 += NC) {
    const nc = min(NC, N - j0);
    for (let k0 = 0; k0 < K; k0 += KC) {
      const kc = min(KC, K - k0);
      // pack B block into panels of NR columns, zero-padded
      for (let jp = 0; jp < nc; jp += NR) {
        const cols = min(NR, nc - jp);
        let p = Bp + (<usize>(jp * kc) << 2);
        if (sBj == 1 && cols == NR) {
          let src = B + (<usize>(k0 * sBk + (j0 + jp)) << 2);
          const step = <usize>sBk << 2;
          for (let k = 0; k < kc; k++) {
            v128.store(p, v128.load(src)); v128.store(p, v128.load(src, 16), 16);
            src += step; p += 32;
          }
        } else if (sBk == 1 && cols == NR) {
          // op(B)'s columns are B's rows, contiguous along K
          packAlongK(p, B + (<usize>((j0 + jp) * sBj + k0) << 2), <usize>sBj << 2, NR, kc);
        } else {
          for (let k = 0; k < kc; k++) {
            const src = B + (<usize>((k0 + k) * sBk + (j0 + jp) * sBj) << 2);
            for (let j = 0; j < NR; j++) store<f32>(p + (<usize>j << 2), j < cols ? load<f32>(src + (<usize>(j * sBj) << 2)) : 0);
            p += 32;
          }
        }
      }
      const acc = k0 > 0;
      for (let i0 = 0; i0 < M; i0 += MC) {
        const mc = min(MC, M - i0);
        // pack A block into panels of MR rows, zero-padded
        for (let ip = 0; ip < mc; ip += MR) {
          const rows = min(MR, mc - ip);
          let p = Ap + (<usize>(ip * kc) << 2);
          if (sAi == 1 && rows == MR) {
            let src = A + (<usize>((i0 + ip) + k0 * sAk) << 2);
            const step = <usize>sAk << 2;
            for (let k = 0; k < kc; k++) { v128.store(p, v128.load(src)); src += step; p += 16; }
          } else if (sAk == 1 && rows == MR) {
            packAlongK(p, A + (<usize>((i0 + ip) * sAi + k0) << 2), <usize>sAi << 2, MR, kc);
          } else {
            for (let k = 0; k < kc; k++) {
              for (let r = 0; r < MR; r++) {
                store<f32>(p + (<usize>r << 2), r < rows ? load<f32>(A + (<usize>((i0 + ip + r) * sAi + (k0 + k) * sAk) << 2)) : 0);
              }
              p += 16;
            }
          }
        }
        for (let jp = 0; jp < nc; jp += NR) {
          const cols = min(NR, nc - jp);
          const bp = Bp + (<usize>(jp * kc) << 2);
          for (let ip = 0; ip < mc; ip += MR) {
            const rows = min(MR, mc - ip);
            micro(kc, Ap + (<usize>(ip * kc) << 2), bp, C + (<usize>((i0 + ip) * ldc + j0 + jp) << 2), ldc, rows, cols, acc, tile);
          }
        }
      }
    }
  }
}
