import type { SlotSpec } from './slots.js';

/**
 * Gradient accumulation: micro-batch gradients are summed and the optimizer steps with
 * their mean every `steps`-th call; nothing else (parameters, slots, step count) changes
 * in between. Unlike bert4keras, the step count counts optimizer steps (schedules keep
 * their meaning) and the first update comes after the first `steps` micro-batches.
 */
export class GradientAccumulation {
  readonly type = 'gradientAccumulation';

  constructor(readonly steps: number) {
    if (!Number.isInteger(steps) || steps < 1) throw new Error(`gradient accumulation steps must be a positive integer, got ${steps}`);
  }

  slots(_name: string, shape: readonly number[]): SlotSpec[] {
    return this.steps > 1 ? [{ name: 'sum', shape: [...shape], init: 'zeros' }] : [];
  }
}

/**
 * An exponential moving average of the weights after every optimizer step, started at
 * zero and bias-corrected by 1 - momentum^t when applied (for evaluation and export).
 */
export class ExponentialMovingAverage {
  readonly type = 'ema';

  constructor(readonly momentum = 0.999) {
    if (!(momentum > 0 && momentum < 1)) throw new Error(`EMA momentum must be in (0, 1), got ${momentum}`);
  }

  slots(_name: string, shape: readonly number[]): SlotSpec[] {
    return [{ name: 'average', shape: [...shape], init: 'zeros' }];
  }
}

export type StepWrapper = GradientAccumulation | ExponentialMovingAverage;
