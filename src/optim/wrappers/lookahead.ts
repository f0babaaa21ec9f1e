import type { ParamStep, UpdateWrapper } from '../rule.js';
import type { SlotSpec } from '../slots.js';

/**
 * Lookahead (Zhang et al. 2019): every k steps slow += alpha (fast - slow), fast = slow.
 * The slow weights start equal to the parameters (bert4keras starts them at zero, so its
 * first sync halves every weight).
 */
export class Lookahead implements UpdateWrapper {
  readonly type = 'lookahead';

  constructor(
    readonly k = 5,
    readonly alpha = 0.5,
  ) {}

  slots(_name: string, shape: readonly number[]): SlotSpec[] {
    return [{ name: 'slow', shape: [...shape], init: 'parameter' }];
  }

  update(p: ParamStep, inner: () => void): void {
    inner();
    if (p.step % this.k !== 0) return;
    const slow = p.slot('slow');
    const { proposed } = p;
    for (let i = 0; i < slow.length; i++) {
      slow[i] = slow[i]! + this.alpha * (proposed[i]! - slow[i]!);
      proposed[i] = slow[i]!;
    }
  }
}
