import type { BaseRule, ParamStep } from './rule.js';
import type { SlotSpec } from './slots.js';

export interface AdamOptions {
  learningRate: number;
  beta1: number;
  beta2: number;
  epsilon: number;
  /** Divide the moments by 1 - beta^t; LAMB pretraining turns this off. */
  biasCorrection: boolean;
}

/** bert4keras's Adam defaults (epsilon 1e-6, not Keras's 1e-7). */
export const ADAM_DEFAULTS: AdamOptions = { learningRate: 1e-3, beta1: 0.9, beta2: 0.999, epsilon: 1e-6, biasCorrection: true };

/** Adam: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2, theta -= lr m^ / (sqrt(v^) + eps). */
export class Adam implements BaseRule {
  readonly type = 'adam';
  readonly options: AdamOptions;

  constructor(options: Partial<AdamOptions> = {}) {
    this.options = { ...ADAM_DEFAULTS, ...options };
  }

  slots(_name: string, shape: readonly number[]): SlotSpec[] {
    return [
      { name: 'm', shape: [...shape], init: 'zeros' },
      { name: 'v', shape: [...shape], init: 'zeros' },
    ];
  }

  learningRate(): number {
    return this.options.learningRate;
  }

  propose(p: ParamStep): void {
    const { beta1: b1, beta2: b2, epsilon, biasCorrection } = this.options;
    const { grad: g, value, proposed } = p;
    const m = p.slot('m');
    const v = p.slot('v');
    const c1 = biasCorrection ? 1 - Math.pow(b1, p.step) : 1;
    const c2 = biasCorrection ? 1 - Math.pow(b2, p.step) : 1;
    // lr m^ / (sqrt(v^) + eps) with the corrections hoisted: one division and one root per element
    const a = p.lr / c1;
    const s = 1 / Math.sqrt(c2);
    for (let i = 0; i < g.length; i++) {
      const gi = g[i]!;
      const mi = (m[i] = b1 * m[i]! + (1 - b1) * gi);
      const vi = (v[i] = b2 * v[i]! + (1 - b2) * gi * gi);
      proposed[i] = value[i]! - (a * Math.fround(mi)) / (Math.sqrt(Math.fround(vi)) * s + epsilon);
    }
  }
}
