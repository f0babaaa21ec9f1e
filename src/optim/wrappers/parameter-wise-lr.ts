import type { ParamStep, UpdateWrapper } from '../rule.js';

/**
 * Per-parameter learning-rate multipliers {name substring: multiplier}; when several
 * substrings match, their multipliers multiply. Scales the change proposed so far.
 */
export class ParameterWiseLr implements UpdateWrapper {
  readonly type = 'parameterWiseLr';
  private readonly cache = new Map<string, number>();

  constructor(readonly multipliers: Readonly<Record<string, number>>) {}

  multiplierOf(name: string): number {
    let m = this.cache.get(name);
    if (m === undefined) {
      m = 1;
      for (const [part, factor] of Object.entries(this.multipliers)) if (name.includes(part)) m *= factor;
      this.cache.set(name, m);
    }
    return m;
  }

  update(p: ParamStep, inner: () => void): void {
    inner();
    const m = this.multiplierOf(p.name);
    if (m === 1) return;
    const { value, proposed } = p;
    for (let i = 0; i < value.length; i++) proposed[i] = value[i]! + (proposed[i]! - value[i]!) * m;
  }
}
