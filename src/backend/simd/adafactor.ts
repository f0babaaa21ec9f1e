// AssemblyScript, built with gemm.ts into dist/src/backend/simd/kernels.wasm.
//
// The two passes of AdaFactor's factored update over a rows x cols matrix (src/optim/
// adafactor.ts, `matrixUpdate`), four lanes at a time. The optimizer runs them in place on a
// worker's reduction buffer, where its gradients and workspace lie, or else on a memory of its
// own (src/optim/adafactor-kernel.ts); never on the tfjs heap. Products and quotients
// are float32, as the tensors are; every sum over the matrix is float64, as in the
// JavaScript version, so only the last bits of an update differ (its tests: 1e-6).

/** colSums[c] = sum over rows of g^2 + eps1, rowSums[r] = sum over cols; both float64. */
export function adafactorSquares(g: usize, rows: i32, cols: i32, colSums: usize, rowSums: usize, eps1: f64): void {
  const whole = cols & ~3;
  for (let c = 0; c < cols; c++) store<f64>(colSums + (<usize>c << 3), 0);
  const epsPair = f64x2.splat(eps1);
  for (let r = 0; r < rows; r++) {
    const row = g + ((<usize>r * <usize>cols) << 2);
    let rowPair = f64x2.splat(0);
    for (let c = 0; c < whole; c += 4) {
      const v = v128.load(row + (<usize>c << 2));
      const squares = f32x4.mul(v, v);
      const low = f64x2.add(f64x2.promote_low_f32x4(squares), epsPair);
      const high = f64x2.add(f64x2.promote_low_f32x4(v128.shuffle<u32>(squares, squares, 2, 3, 0, 1)), epsPair);
      const at = colSums + (<usize>c << 3);
      v128.store(at, f64x2.add(v128.load(at), low));
      v128.store(at + 16, f64x2.add(v128.load(at + 16), high));
      rowPair = f64x2.add(rowPair, f64x2.add(low, high));
    }
    let rowSum = f64x2.extract_lane(rowPair, 0) + f64x2.extract_lane(rowPair, 1);
    for (let c = whole; c < cols; c++) {
      const x = load<f32>(row + (<usize>c << 2));
      const s = <f64>(x * x) + eps1;
      const at = colSums + (<usize>c << 3);
      store<f64>(at, load<f64>(at) + s);
      rowSum += s;
    }
    store<f64>(rowSums + (<usize>r << 3), rowSum);
  }
}

/**
 * u = g / sqrt(colStat[c] * rowStat[r] * inverseMean + eps1); sums[0] = sum of u^2 (the
 * update clipping), sums[1] = sum of value^2 (the parameter scale), both float64.
 */
export function adafactorUpdate(g: usize, value: usize, u: usize, colStat: usize, rowStat: usize, inverseMean: f64,
    eps1: f32, rows: i32, cols: i32, sums: usize): void {
  const whole = cols & ~3;
  let squaresPair = f64x2.splat(0);
  let valuesPair = f64x2.splat(0);
  let squares: f64 = 0;
  let values: f64 = 0;
  const epsQuad = f32x4.splat(eps1);
  for (let r = 0; r < rows; r++) {
    const offset = (<usize>r * <usize>cols) << 2;
    const hx = <f32>(<f64>load<f32>(rowStat + (<usize>r << 2)) * inverseMean);
    const hxQuad = f32x4.splat(hx);
    for (let c = 0; c < whole; c += 4) {
      const at = offset + (<usize>c << 2);
      const v = f32x4.add(f32x4.mul(v128.load(colStat + (<usize>c << 2)), hxQuad), epsQuad);
      const q = f32x4.div(v128.load(g + at), f32x4.sqrt(v));
      v128.store(u + at, q);
      const q2 = f32x4.mul(q, q);
      squaresPair = f64x2.add(squaresPair, f64x2.add(f64x2.promote_low_f32x4(q2), f64x2.promote_low_f32x4(v128.shuffle<u32>(q2, q2, 2, 3, 0, 1))));
      const w = v128.load(value + at);
      const w2 = f32x4.mul(w, w);
      valuesPair = f64x2.add(valuesPair, f64x2.add(f64x2.promote_low_f32x4(w2), f64x2.promote_low_f32x4(v128.shuffle<u32>(w2, w2, 2, 3, 0, 1))));
    }
    for (let c = whole; c < cols; c++) {
      const at = offset + (<usize>c << 2);
      const q = load<f32>(g + at) / Mathf.sqrt(load<f32>(colStat + (<usize>c << 2)) * hx + eps1);
      store<f32>(u + at, q);
      squares += <f64>(q * q);
      const w = load<f32>(value + at);
      values += <f64>(w * w);
    }
  }
  store<f64>(sums, squares + f64x2.extract_lane(squaresPair, 0) + f64x2.extract_lane(squaresPair, 1));
  store<f64>(sums + 8, values + f64x2.extract_lane(valuesPair, 0) + f64x2.extract_lane(valuesPair, 1));
}

/** u = value - step * u, in place: the update without a first moment, once the clipping and the scale are known. */
export function adafactorStep(value: usize, u: usize, n: i32, step: f32): void {
  const whole = n & ~3;
  const stepQuad = f32x4.splat(step);
  for (let i = 0; i < whole; i += 4) {
    const at = <usize>i << 2;
    v128.store(u + at, f32x4.sub(v128.load(value + at), f32x4.mul(stepQuad, v128.load(u + at))));
  }
  for (let i = whole; i < n; i++) {
    const at = <usize>i << 2;
    store<f32>(u + at, load<f32>(value + at) - step * load<f32>(u + at));
  }
}
