import type { SlotSpec } from './slots.js';

/**
 * One parameter's update in one optimizer step, as the base rule and the wrappers see it.
 * The base writes the proposed new value into `proposed`; each wrapper, in the order the
 * user wrote them, may change `proposed` after the pieces before it ran (bert4keras's
 * `new_x`). Wrappers work on the proposed value rather than on a difference so that
 * Lookahead and lazy rows land exactly on the values they mean.
 */
export interface ParamStep {
  readonly name: string;
  readonly shape: readonly number[];
  /** The parameter before this step; nobody writes to it. */
  readonly value: Float32Array;
  readonly grad: Float32Array;
  /** The new value proposed so far. */
  readonly proposed: Float32Array;
  /**
   * Free floats for the rule's temporaries (at least its `scratchElements` for this shape)
   * when the optimizer has a workspace (see Optimizer.apply), absent otherwise. It lies in the
   * workspace's memory, which `value`, `grad` and `proposed` share only when the parameters
   * copy their values into it (VariableParameters) and the gradient is the caller's (not an
   * accumulation sum): a rule must check (AdaFactor's `inPlaceMatrixPasses` does).
   */
  readonly scratch?: Float32Array;
  /** t: the 1-based number of this optimizer step (micro-steps of accumulation do not count). */
  readonly step: number;
  /** This step's learning rate after every schedule. */
  readonly lr: number;
  /** This component's slot `name` for this parameter (declared by its `slots`). */
  slot(name: string): Float32Array;
  /** Every slot of this parameter, of every component: what lazy optimization freezes. */
  allSlots(): readonly { readonly shape: readonly number[]; readonly data: Float32Array }[];
}

/** A base optimizer: turns a gradient into a proposed new value. */
export interface BaseRule {
  readonly type: string;
  /** The slots one parameter of this name and shape needs (names without the component prefix). */
  slots(name: string, shape: readonly number[]): SlotSpec[];
  /** The learning rate of step t before any schedule wrapper. */
  learningRate(step: number): number;
  propose(p: ParamStep): void;
  /** Floats of `ParamStep.scratch` the rule can use for a parameter of this shape (none when absent). */
  scratchElements?(shape: readonly number[]): number;
}

/** A derived-optimizer piece; every member is optional. */
export interface UpdateWrapper {
  readonly type: string;
  slots?(name: string, shape: readonly number[]): SlotSpec[];
  /** Scales the learning rate every piece sees; `completedSteps` is t - 1 (bert4keras's `iterations`). */
  learningRate?(lr: number, completedSteps: number): number;
  /** Runs `inner` (the base and every wrapper written before this one), then changes `p.proposed`. */
  update?(p: ParamStep, inner: () => void): void;
}

/** Names matching any of these regular expressions (bert4keras's exclusion lists). */
export class NamePatterns {
  private readonly regexps: RegExp[];

  constructor(readonly patterns: readonly string[]) {
    this.regexps = patterns.map((p) => new RegExp(p));
  }

  matches(name: string): boolean {
    return this.regexps.some((r) => r.test(name));
  }
}

/** The L2 norm, accumulated in double precision. */
export function norm(values: Float32Array): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i]! * values[i]!;
  return Math.sqrt(s);
}

/** Root mean square, accumulated in double precision. */
export function rms(values: Float32Array): number {
  if (values.length === 0) return 0;
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i]! * values[i]!;
  return Math.sqrt(s / values.length);
}
