export interface ClassificationMetrics {
  accuracy: number;
  /** Mean of the per-label F1 over the labels that occur in the gold labels or the predictions. */
  macroF1: number;
  count: number;
}

/** Accuracy and macro-F1 of predicted label ids against gold ones. */
export function classificationMetrics(gold: ArrayLike<number>, predicted: ArrayLike<number>): ClassificationMetrics {
  if (gold.length !== predicted.length) throw new Error(`${gold.length} gold labels but ${predicted.length} predictions`);
  const count = gold.length;
  if (count === 0) return { accuracy: NaN, macroF1: NaN, count: 0 };
  const tp = new Map<number, number>();
  const goldCount = new Map<number, number>();
  const predCount = new Map<number, number>();
  let correct = 0;
  for (let i = 0; i < count; i++) {
    const g = gold[i]!;
    const p = predicted[i]!;
    goldCount.set(g, (goldCount.get(g) ?? 0) + 1);
    predCount.set(p, (predCount.get(p) ?? 0) + 1);
    if (g === p) {
      correct++;
      tp.set(g, (tp.get(g) ?? 0) + 1);
    }
  }
  const labels = new Set([...goldCount.keys(), ...predCount.keys()]);
  let f1Sum = 0;
  for (const l of labels) {
    const t = tp.get(l) ?? 0;
    // F1 = 2 tp / (gold + predicted); 0 when the label was never right
    f1Sum += (2 * t) / ((goldCount.get(l) ?? 0) + (predCount.get(l) ?? 0));
  }
  return { accuracy: correct / count, macroF1: f1Sum / labels.size, count };
}

/** Index of the largest value of each row of a row-major [rows, width] array. */
export function argmaxRows(values: Float32Array, width: number): Int32Array {
  const rows = values.length / width;
  const out = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = 0;
    for (let c = 1; c < width; c++) if (values[r * width + c]! > values[r * width + best]!) best = c;
    out[r] = best;
  }
  return out;
}
