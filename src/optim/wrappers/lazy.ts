import { NamePatterns, type ParamStep, type UpdateWrapper } from '../rule.js';

/**
 * Lazy optimization for embeddings: rows whose gradient row is all zero (tokens absent
 * from the batch) keep their value and their row of every optimizer slot, as if the
 * pieces written before this one had not run for them. Applies to matching parameters
 * of rank >= 2; a slot is row-aligned when it has the parameter's rank and first dim.
 * A tied token embedding gets gradient in every row from the output softmax, so this
 * helps the segment and position tables or an untied embedding.
 */
export class LazyOptimization implements UpdateWrapper {
  readonly type = 'lazy';
  private readonly included: NamePatterns;

  constructor(include: readonly string[] = ['Embedding']) {
    this.included = new NamePatterns(include);
  }

  update(p: ParamStep, inner: () => void): void {
    if (p.shape.length < 2 || !this.included.matches(p.name)) return inner();
    const rows = p.shape[0]!;
    const width = p.value.length / rows;
    const { grad, value, proposed } = p;
    const idle: number[] = [];
    for (let r = 0; r < rows; r++) {
      let zero = true;
      for (let i = r * width, end = i + width; i < end; i++) {
        if (grad[i] !== 0) {
          zero = false;
          break;
        }
      }
      if (zero) idle.push(r);
    }
    if (idle.length === 0) return inner();
    const aligned = p.allSlots().filter((s) => s.shape.length === p.shape.length && s.shape[0] === rows);
    const saved = aligned.map((s) => {
      const w = s.data.length / rows;
      const copy = new Float32Array(idle.length * w);
      idle.forEach((r, j) => copy.set(s.data.subarray(r * w, (r + 1) * w), j * w));
      return copy;
    });
    inner();
    aligned.forEach((s, k) => {
      const w = s.data.length / rows;
      idle.forEach((r, j) => s.data.set(saved[k]!.subarray(j * w, (j + 1) * w), r * w));
    });
    for (const r of idle) proposed.set(value.subarray(r * width, (r + 1) * width), r * width);
  }
}
