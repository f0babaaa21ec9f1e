import type { BaseRule, ParamStep } from './rule.js';
import type { SlotSpec } from './slots.js';

export interface SgdOptions {
  learningRate: number;
  /** 0: plain SGD, no slot. */
  momentum: number;
  nesterov: boolean;
}

export const SGD_DEFAULTS: SgdOptions = { learningRate: 1e-2, momentum: 0, nesterov: false };

/** SGD with Keras's momentum: velocity = momentum velocity - lr g; theta += velocity (Nesterov: momentum velocity - lr g). */
export class Sgd implements BaseRule {
  readonly type = 'sgd';
  readonly options: SgdOptions;

  constructor(options: Partial<SgdOptions> = {}) {
    this.options = { ...SGD_DEFAULTS, ...options };
  }

  slots(_name: string, shape: readonly number[]): SlotSpec[] {
    return this.options.momentum > 0 ? [{ name: 'velocity', shape: [...shape], init: 'zeros' }] : [];
  }

  learningRate(): number {
    return this.options.learningRate;
  }

  propose(p: ParamStep): void {
    const { momentum, nesterov } = this.options;
    const { grad: g, value, proposed } = p;
    const lr = p.lr;
    if (momentum === 0) {
      for (let i = 0; i < g.length; i++) proposed[i] = value[i]! - lr * g[i]!;
      return;
    }
    const velocity = p.slot('velocity');
    for (let i = 0; i < g.length; i++) {
      velocity[i] = momentum * velocity[i]! - lr * g[i]!;
      proposed[i] = value[i]! + (nesterov ? momentum * velocity[i]! - lr * g[i]! : velocity[i]!);
    }
  }
}
