import { NamePatterns, type ParamStep, type UpdateWrapper } from '../rule.js';

/** Decoupled weight decay (AdamW): theta_new -= lr * rate * theta, except names matching `exclude`. */
export class WeightDecay implements UpdateWrapper {
  readonly type = 'weightDecay';
  private readonly excluded: NamePatterns;

  constructor(
    readonly rate = 0.01,
    exclude: readonly string[] = [],
  ) {
    this.excluded = new NamePatterns(exclude);
  }

  update(p: ParamStep, inner: () => void): void {
    inner();
    if (this.rate === 0 || this.excluded.matches(p.name)) return;
    const decay = p.lr * this.rate;
    const { value, proposed } = p;
    for (let i = 0; i < value.length; i++) proposed[i] = proposed[i]! - decay * value[i]!;
  }
}
