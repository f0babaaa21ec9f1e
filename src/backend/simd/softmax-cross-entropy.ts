// AssemblyScript, built with gemm.ts into dist/src/backend/simd/kernels.wasm.
//
// Softmax cross-entropy of logits [rows, v] against integer labels, forward and
// backward, one row at a time. As tfjs ops the backward pass alone holds four
// [rows, v] tensors at once (one-hot, its cast, the difference, the product):
// with a 21k vocabulary that is most of an MLM step's peak memory.

import { expNonPositive, logPositive } from './lib/math';

/** -log(1e-30): where the ops path clamps a reported loss (its probability underflowed). */
const MAX_LOSS: f32 = 69.07755279;

@inline function rowMax(row: usize, v: i32, whole: i32): f32 {
  let acc = f32x4.splat(-Infinity);
  for (let j = 0; j < whole; j += 4) acc = f32x4.max(acc, v128.load(row + (<usize>j << 2)));
  let m = max(max(f32x4.extract_lane(acc, 0), f32x4.extract_lane(acc, 1)), max(f32x4.extract_lane(acc, 2), f32x4.extract_lane(acc, 3)));
  for (let j = whole; j < v; j++) m = max(m, load<f32>(row + (<usize>j << 2)));
  return m;
}

/**
 * probs = softmax(logits) per row, and loss[r] = -log probs[r, labels[r]] (at most
 * MAX_LOSS). Labels must be in [0, v): the caller checks.
 */
export function softmaxCrossEntropy(logits: usize, labels: usize, loss: usize, probs: usize, rows: i32, v: i32): void {
  const whole = v & ~3;
  const rowBytes = <usize>v << 2;
  for (let r = 0; r < rows; r++) {
    const xr = logits + <usize>r * rowBytes;
    const pr = probs + <usize>r * rowBytes;
    const m = rowMax(xr, v, whole);
    const mv = f32x4.splat(m);
    let acc = f32x4.splat(0);
    for (let j = 0; j < whole; j += 4) {
      const o = <usize>j << 2;
      const e = expNonPositive(f32x4.sub(v128.load(xr + o), mv));
      v128.store(pr + o, e);
      acc = f32x4.add(acc, e);
    }
    let sum = f32x4.extract_lane(acc, 0) + f32x4.extract_lane(acc, 1) + f32x4.extract_lane(acc, 2) + f32x4.extract_lane(acc, 3);
    for (let j = whole; j < v; j++) {
      const o = <usize>j << 2;
      const e = f32x4.extract_lane(expNonPositive(f32x4.splat(load<f32>(xr + o) - m)), 0);
      store<f32>(pr + o, e);
      sum += e;
    }
    const scale = f32x4.splat(<f32>1 / sum);
    for (let j = 0; j < whole; j += 4) {
      const o = <usize>j << 2;
      v128.store(pr + o, f32x4.mul(v128.load(pr + o), scale));
    }
    for (let j = whole; j < v; j++) {
      const o = <usize>j << 2;
      store<f32>(pr + o, load<f32>(pr + o) / sum);
    }
    const label = load<i32>(labels + (<usize>r << 2));
    const value = logPositive(sum) - (load<f32>(xr + (<usize>label << 2)) - m);
    store<f32>(loss + (<usize>r << 2), min(value, MAX_LOSS));
  }
}

/** dLogits[r, j] = (probs[r, j] - [j == labels[r]]) * dLoss[r]. */
export function softmaxCrossEntropyBackward(probs: usize, labels: usize, dLoss: usize, dLogits: usize, rows: i32, v: i32): void {
  const whole = v & ~3;
  const rowBytes = <usize>v << 2;
  for (let r = 0; r < rows; r++) {
    const pr = probs + <usize>r * rowBytes;
    const dr = dLogits + <usize>r * rowBytes;
    const d = load<f32>(dLoss + (<usize>r << 2));
    const dv = f32x4.splat(d);
    for (let j = 0; j < whole; j += 4) {
      const o = <usize>j << 2;
      v128.store(dr + o, f32x4.mul(v128.load(pr + o), dv));
    }
    for (let j = whole; j < v; j++) {
      const o = <usize>j << 2;
      store<f32>(dr + o, load<f32>(pr + o) * d);
    }
    const at = <usize>load<i32>(labels + (<usize>r << 2)) << 2;
    store<f32>(dr + at, (load<f32>(pr + at) - 1) * d);
  }
}
