// AssemblyScript, built with gemm.ts into dist/src/backend/simd/kernels.wasm.
//
// Layer normalisation over rows of width w, forward and backward, one row at a
// time while it sits in L1. As tfjs ops each direction is about ten full passes
// over [batch, seq, hidden]. The backward pass recomputes the row statistics from
// x (two cheap passes over a row) so that only x is kept between the two.

@inline function horizontalSum(v: v128): f32 {
  return f32x4.extract_lane(v, 0) + f32x4.extract_lane(v, 1) + f32x4.extract_lane(v, 2) + f32x4.extract_lane(v, 3);
}

@inline function rowMean(row: usize, w: i32, whole: i32): f32 {
  let acc = f32x4.splat(0);
  for (let j = 0; j < whole; j += 4) acc = f32x4.add(acc, v128.load(row + (<usize>j << 2)));
  let sum = horizontalSum(acc);
  for (let j = whole; j < w; j++) sum += load<f32>(row + (<usize>j << 2));
  return sum / <f32>w;
}

/** 1/sqrt(var + epsilon) of a row, the variance taken around `mean` (two-pass, as the ops path). */
@inline function rowRstd(row: usize, w: i32, whole: i32, mean: f32, epsilon: f32): f32 {
  const m = f32x4.splat(mean);
  let acc = f32x4.splat(0);
  for (let j = 0; j < whole; j += 4) {
    const c = f32x4.sub(v128.load(row + (<usize>j << 2)), m);
    acc = f32x4.add(acc, f32x4.mul(c, c));
  }
  let sum = horizontalSum(acc);
  for (let j = whole; j < w; j++) {
    const c = load<f32>(row + (<usize>j << 2)) - mean;
    sum += c * c;
  }
  return <f32>1 / Mathf.sqrt(sum / <f32>w + epsilon);
}

/** out = (x - mean) * rstd * gamma + beta per row of x [rows, w]. */
export function layerNormForward(x: usize, gamma: usize, beta: usize, out: usize, rows: i32, w: i32, epsilon: f32): void {
  const whole = w & ~3;
  const rowBytes = <usize>w << 2;
  for (let r = 0; r < rows; r++) {
    const xr = x + <usize>r * rowBytes;
    const or = out + <usize>r * rowBytes;
    const mean = rowMean(xr, w, whole);
    const rstd = rowRstd(xr, w, whole, mean, epsilon);
    const m = f32x4.splat(mean);
    const s = f32x4.splat(rstd);
    for (let j = 0; j < whole; j += 4) {
      const o = <usize>j << 2;
      const xhat = f32x4.mul(f32x4.sub(v128.load(xr + o), m), s);
      v128.store(or + o, f32x4.add(f32x4.mul(xhat, v128.load(gamma + o)), v128.load(beta + o)));
    }
    for (let j = whole; j < w; j++) {
      const o = <usize>j << 2;
      const xhat = (load<f32>(xr + o) - mean) * rstd;
      store<f32>(or + o, xhat * load<f32>(gamma + o) + load<f32>(beta + o));
    }
  }
}

/**
 * dx = rstd * (g*dy - mean(g*dy) - xhat * mean(g*dy*xhat)) per row; dGamma = sum over rows
 * of dy*xhat and dBeta = sum of dy, written to dGamma/dBeta (w floats each).
 */
export function layerNormBackward(dy: usize, x: usize, gamma: usize, dx: usize, dGamma: usize, dBeta: usize,
    rows: i32, w: i32, epsilon: f32): void {
  const whole = w & ~3;
  const rowBytes = <usize>w << 2;
  memory.fill(dGamma, 0, rowBytes);
  memory.fill(dBeta, 0, rowBytes);
  for (let r = 0; r < rows; r++) {
    const xr = x + <usize>r * rowBytes;
    const dyr = dy + <usize>r * rowBytes;
    const dxr = dx + <usize>r * rowBytes;
    const mean = rowMean(xr, w, whole);
    const rstd = rowRstd(xr, w, whole, mean, epsilon);
    const m = f32x4.splat(mean);
    const s = f32x4.splat(rstd);
    // pass 1: the two row means, and the parameter gradients
    let accG = f32x4.splat(0);
    let accGX = f32x4.splat(0);
    for (let j = 0; j < whole; j += 4) {
      const o = <usize>j << 2;
      const xhat = f32x4.mul(f32x4.sub(v128.load(xr + o), m), s);
      const d = v128.load(dyr + o);
      const gd = f32x4.mul(d, v128.load(gamma + o));
      accG = f32x4.add(accG, gd);
      accGX = f32x4.add(accGX, f32x4.mul(gd, xhat));
      v128.store(dGamma + o, f32x4.add(v128.load(dGamma + o), f32x4.mul(d, xhat)));
      v128.store(dBeta + o, f32x4.add(v128.load(dBeta + o), d));
    }
    let sumG = horizontalSum(accG);
    let sumGX = horizontalSum(accGX);
    for (let j = whole; j < w; j++) {
      const o = <usize>j << 2;
      const xhat = (load<f32>(xr + o) - mean) * rstd;
      const d = load<f32>(dyr + o);
      const gd = d * load<f32>(gamma + o);
      sumG += gd;
      sumGX += gd * xhat;
      store<f32>(dGamma + o, load<f32>(dGamma + o) + d * xhat);
      store<f32>(dBeta + o, load<f32>(dBeta + o) + d);
    }
    const meanG = sumG / <f32>w;
    const meanGX = sumGX / <f32>w;
    // pass 2: dx
    const mG = f32x4.splat(meanG);
    const mGX = f32x4.splat(meanGX);
    for (let j = 0; j < whole; j += 4) {
      const o = <usize>j << 2;
      const xhat = f32x4.mul(f32x4.sub(v128.load(xr + o), m), s);
      const gd = f32x4.mul(v128.load(dyr + o), v128.load(gamma + o));
      v128.store(dxr + o, f32x4.mul(s, f32x4.sub(f32x4.sub(gd, mG), f32x4.mul(xhat, mGX))));
    }
    for (let j = whole; j < w; j++) {
      const o = <usize>j << 2;
      const xhat = (load<f32>(xr + o) - mean) * rstd;
      const gd = load<f32>(dyr + o) * load<f32>(gamma + o);
      store<f32>(dxr + o, rstd * (gd - meanG - xhat * meanGX));
    }
  }
}
