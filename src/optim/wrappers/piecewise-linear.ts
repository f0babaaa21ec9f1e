import type { UpdateWrapper } from '../rule.js';

/**
 * A learning-rate multiplier linear between knots {step: multiplier}; (0, 0) is prepended
 * when the schedule does not start at step 0, and the last multiplier holds after the last
 * knot. `step` counts completed optimizer steps, as bert4keras's `iterations` does.
 */
export function piecewiseLinear(step: number, knots: readonly (readonly [number, number])[]): number {
  const points = knots[0] && knots[0][0] === 0 ? knots : [[0, 0] as const, ...knots];
  if (step >= points[points.length - 1]![0]) return points[points.length - 1]![1];
  for (let i = 1; i < points.length; i++) {
    const [x1, y1] = points[i]!;
    if (step < x1) {
      const [x0, y0] = points[i - 1]!;
      return y0 + ((y1 - y0) * (step - x0)) / (x1 - x0);
    }
  }
  return points[points.length - 1]![1];
}

export class PiecewiseLinearSchedule implements UpdateWrapper {
  readonly type = 'piecewiseLinear';
  readonly knots: readonly (readonly [number, number])[];

  /** `schedule` maps a step (as a number or a numeric string, as JSON keys are) to a multiplier. */
  constructor(schedule: Readonly<Record<string, number>>) {
    const knots = Object.entries(schedule)
      .map(([step, multiplier]) => [Number(step), multiplier] as const)
      .sort((a, b) => a[0] - b[0]);
    if (knots.length === 0) throw new Error('a piecewise-linear schedule needs at least one knot');
    for (const [step, multiplier] of knots) {
      if (!Number.isInteger(step) || step < 0) throw new Error(`schedule step ${step} is not a non-negative integer`);
      if (!Number.isFinite(multiplier) || multiplier < 0) throw new Error(`schedule multiplier ${multiplier} at step ${step} is not a number >= 0`);
    }
    this.knots = knots;
  }

  learningRate(lr: number, completedSteps: number): number {
    return lr * piecewiseLinear(completedSteps, this.knots);
  }
}
