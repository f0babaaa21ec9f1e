import { type ParameterAccess, sizeOf } from './parameters.js';
import type { BaseRule, ParamStep, UpdateWrapper } from './rule.js';
import { type NamedArray, type Slot, type SlotSpec, slotBytes, SlotStore } from './slots.js';
import { ExponentialMovingAverage, GradientAccumulation, type StepWrapper } from './step-wrappers.js';
import { AdaFactor } from './adafactor.js';

export const OPTIMIZER_STATE_FORMAT = 'tfjs-pretrain-optimizer/1';

/** Everything an optimizer needs to continue exactly where it stopped. */
export interface OptimizerState {
  readonly format: typeof OPTIMIZER_STATE_FORMAT;
  /** The components in order (e.g. `adafactor`, `weightDecay`, `ema`): state only loads into the same composition. */
  readonly components: readonly string[];
  /** Optimizer steps applied. */
  readonly iterations: number;
  /** Micro-batches accumulated since the last step. */
  readonly microSteps: number;
  readonly slots: readonly NamedArray[];
}

export interface StepReport {
  /** False for a micro-step of gradient accumulation: nothing changed but the sums. */
  readonly applied: boolean;
  /** Optimizer steps applied so far. */
  readonly iterations: number;
  /** The learning rate the step used (NaN when not applied). */
  readonly lr: number;
}

/**
 * Memory the optimizer works in instead of arrays of its own (Optimizer.apply): a worker
 * passes views of its reduction buffer, where the gradients lie, so that the base rule's
 * SIMD passes read the gradient and the values and write the proposed update in place
 * (AdaFactor's, src/optim/adafactor-kernel.ts) instead of copying them in and out.
 * Sizes: `Optimizer.workspaceElements`.
 */
export interface OptimizerWorkspace {
  /** Each parameter's values are read into it. */
  readonly value: Float32Array;
  /** Where the new values are proposed. */
  readonly proposed: Float32Array;
  /** The base rule's temporaries (ParamStep.scratch). */
  readonly scratch: Float32Array;
}

export class OptimizerError extends Error {
  override name = 'OptimizerError';
}

type Component = BaseRule | UpdateWrapper | StepWrapper;

/**
 * A base rule (AdaFactor, Adam, SGD) composed with wrappers in the written order: each
 * update wrapper runs the pieces before it and then changes the proposed value; the
 * step-level wrappers (gradient accumulation, EMA) act on whole steps and come last.
 * Everything it keeps is in named slots, so `getState` / `setState` resume exactly.
 * Parameters are updated one at a time from a `ParameterAccess`, so host memory holds
 * one parameter's values, not the model's.
 */
export class Optimizer {
  private readonly store = new SlotStore();
  /** The base, then the wrappers, in the written order. */
  private readonly components: readonly Component[];
  private readonly prefixes: string[];
  private readonly accumulation: GradientAccumulation | undefined;
  private readonly ema: ExponentialMovingAverage | undefined;
  /** Full slot names of the accumulation sums and the EMA. */
  private readonly sumSlot: string;
  private readonly averageSlot: string;
  private iterations = 0;
  private microSteps = 0;
  private paramNames: readonly string[] | undefined;
  private scratch = new Float32Array(0);
  private trainedBackup: Float32Array[] | undefined;
  /** Set by setState: the restored slots are matched against the parameters at the next step. */
  private restoredUnchecked = false;
  /** Whether every existing slot has been matched against its parameter's declaration. */
  private slotsChecked = false;

  constructor(
    readonly base: BaseRule,
    readonly wrappers: readonly UpdateWrapper[] = [],
    readonly stepWrappers: readonly StepWrapper[] = [],
  ) {
    const components: Component[] = (this.components = [base, ...wrappers, ...stepWrappers]);
    const seen = new Map<string, number>();
    this.prefixes = components.map((c) => {
      const n = (seen.get(c.type) ?? 0) + 1;
      seen.set(c.type, n);
      return n === 1 ? c.type : `${c.type}-${n}`;
    });
    const accumulations = stepWrappers.filter((w): w is GradientAccumulation => w instanceof GradientAccumulation);
    const averages = stepWrappers.filter((w): w is ExponentialMovingAverage => w instanceof ExponentialMovingAverage);
    if (accumulations.length > 1 || averages.length > 1) throw new OptimizerError('gradient accumulation and EMA may each appear once');
    this.accumulation = accumulations[0];
    this.ema = averages[0];
    const prefixOf = (c: Component | undefined) => (c ? this.prefixes[components.indexOf(c)]! : '');
    this.sumSlot = `${prefixOf(this.accumulation)}/sum`;
    this.averageSlot = `${prefixOf(this.ema)}/average`;
  }

  /** The composition, e.g. `adam > weightDecay > layerAdaptation > gradientAccumulation`. */
  get description(): string {
    return this.prefixes.join(' > ');
  }

  /** Whether it keeps an EMA of the weights (see `applyAverage`). */
  get keepsAverage(): boolean {
    return this.ema !== undefined;
  }

  get completedSteps(): number {
    return this.iterations;
  }

  /** The learning rate the next step will use. */
  get currentLearningRate(): number {
    return this.learningRateAt(this.iterations);
  }

  learningRateAt(completedSteps: number): number {
    let lr = this.base.learningRate(completedSteps + 1);
    for (const w of this.wrappers) if (w.learningRate) lr = w.learningRate(lr, completedSteps);
    return lr;
  }

  /** Every slot one parameter of this shape gets, with its full name `<component>/<slot>`. */
  slotSpecs(name: string, shape: readonly number[]): SlotSpec[] {
    return this.components.flatMap((c, k) => (c.slots?.(name, shape) ?? []).map((s) => ({ ...s, name: `${this.prefixes[k]}/${s.name}` })));
  }

  /** The state bytes parameters of these shapes need, from the same declarations that create the slots. */
  stateBytesFor(params: readonly { name: string; shape: readonly number[] }[]): number {
    return params.reduce((n, p) => n + slotBytes(this.slotSpecs(p.name, p.shape)), 0);
  }

  /** Bytes of state held now. */
  stateBytes(): number {
    return this.store.bytes();
  }

  /** The floats each part of an `OptimizerWorkspace` needs for parameters of these shapes. */
  workspaceElements(shapes: readonly (readonly number[])[]): { value: number; proposed: number; scratch: number } {
    const largest = shapes.reduce((n, s) => Math.max(n, sizeOf(s)), 0);
    const scratch = shapes.reduce((n, s) => Math.max(n, this.base.scratchElements?.(s) ?? 0), 0);
    return { value: largest, proposed: largest, scratch };
  }

  /**
   * Applies one gradient per parameter (in `params` order). With gradient accumulation,
   * only every k-th call steps; the others add to the sums and return `applied: false`.
   * Non-finite gradients are refused before anything changes, at the cost of a pass over
   * them; a caller that computed their norm already (finite only if every value is) says
   * `gradientsFinite` and saves it. `workspace`: see OptimizerWorkspace; the update is the
   * same with or without it.
   */
  apply(params: ParameterAccess, grads: readonly Float32Array[], options: { gradientsFinite?: boolean; workspace?: OptimizerWorkspace } = {}): StepReport {
    if (this.trainedBackup) throw new OptimizerError('the EMA weights are applied; call restoreTrained() before the next step');
    this.checkParameters(params, grads, options.gradientsFinite === true);
    const k = this.accumulation?.steps ?? 1;
    if (k > 1) {
      for (let i = 0; i < grads.length; i++) {
        const sum = this.slotsOf(params, i).get(this.sumSlot)!.data;
        const g = grads[i]!;
        for (let j = 0; j < g.length; j++) sum[j] = sum[j]! + g[j]!;
      }
      this.microSteps++;
      if (this.microSteps < k) return { applied: false, iterations: this.iterations, lr: NaN };
    }
    const t = this.iterations + 1;
    const lr = this.learningRateAt(this.iterations);
    const workspace = options.workspace;
    for (let i = 0; i < params.names.length; i++) {
      const name = params.names[i]!;
      const shape = params.shape(i);
      const n = sizeOf(shape);
      const value = params.read(i, workspace && workspace.value.length >= n ? workspace.value.subarray(0, n) : undefined);
      const slots = this.slotsOf(params, i, value);
      let grad = grads[i]!;
      let sum: Float32Array | undefined;
      if (k > 1) {
        sum = slots.get(this.sumSlot)!.data;
        for (let j = 0; j < sum.length; j++) sum[j] = sum[j]! / k;
        grad = sum;
      }
      let proposed: Float32Array;
      if (workspace && workspace.proposed.length >= n) {
        proposed = workspace.proposed.subarray(0, n);
      } else {
        if (this.scratch.length < n) this.scratch = new Float32Array(n);
        proposed = this.scratch.subarray(0, n);
      }
      const stepFor = (prefix: string): ParamStep => ({
        name,
        shape,
        value,
        grad,
        proposed,
        scratch: workspace?.scratch,
        step: t,
        lr,
        slot: (slotName: string) => {
          const slot = slots.get(`${prefix}/${slotName}`);
          if (!slot) throw new OptimizerError(`${prefix} asked for slot ${slotName} of ${name}, which it did not declare`);
          return slot.data;
        },
        allSlots: () => [...slots.values()],
      });
      const run = (w: number): void => {
        if (w < 0) return this.base.propose(stepFor(this.prefixes[0]!));
        const wrapper = this.wrappers[w]!;
        if (wrapper.update) wrapper.update(stepFor(this.prefixes[w + 1]!), () => run(w - 1));
        else run(w - 1);
      };
      run(this.wrappers.length - 1);
      params.write(i, proposed);
      if (this.ema) {
        const average = slots.get(this.averageSlot)!.data;
        const m = this.ema.momentum;
        for (let j = 0; j < average.length; j++) average[j] = m * average[j]! + (1 - m) * proposed[j]!;
      }
      sum?.fill(0);
    }
    this.iterations = t;
    this.microSteps = 0;
    return { applied: true, iterations: t, lr };
  }

  /**
   * The base rule when a step may be computed outside `apply`, sharded across replicas
   * (src/optim/sharded-adafactor.ts): AdaFactor without a first moment, accumulation or EMA,
   * and wrappers that only schedule the learning rate (currentLearningRate holds them), whose
   * state is small (a row and a column statistic per matrix), so that every replica keeps all
   * of it. Undefined otherwise: `apply` runs on every replica.
   */
  shardableRule(): AdaFactor | undefined {
    const base = this.base;
    const scheduleOnly = this.wrappers.every((w) => !w.update && !w.slots);
    return base instanceof AdaFactor && base.options.beta1 === 0 && scheduleOnly && this.stepWrappers.length === 0 && !this.trainedBackup ? base : undefined;
  }

  /**
   * For a step computed outside `apply`: the parameters are checked as `apply` checks them,
   * and parameter `index`'s slots of the base rule are returned by name (created if new).
   */
  baseSlots(params: ParameterAccess): (index: number, slot: string) => Float32Array {
    this.checkParameters(params);
    return (index, slot) => {
      const found = this.slotsOf(params, index).get(`${this.prefixes[0]}/${slot}`);
      if (!found) throw new OptimizerError(`${this.prefixes[0]} has no slot ${slot} for ${params.names[index]}`);
      return found.data;
    };
  }

  /** A step computed outside `apply` was written (values and slots): the step counter advances as `apply`'s does. */
  recordExternalStep(): void {
    this.iterations++;
    this.microSteps = 0;
  }

  /** Swaps the bias-corrected EMA weights in (for evaluation or export); `restoreTrained` swaps back. */
  applyAverage(params: ParameterAccess): void {
    if (!this.ema) throw new OptimizerError('this optimizer keeps no EMA of the weights; add {type: "ema"} to its wrappers');
    if (this.trainedBackup) throw new OptimizerError('the EMA weights are already applied');
    if (this.iterations === 0) throw new OptimizerError('no optimizer step has been applied yet: there is no average');
    this.checkParameters(params);
    const correction = 1 - Math.pow(this.ema.momentum, this.iterations);
    const backup: Float32Array[] = [];
    for (let i = 0; i < params.names.length; i++) {
      const average = this.store.of(params.names[i]!)?.get(this.averageSlot);
      if (!average) throw new OptimizerError(`no EMA of ${params.names[i]} (it was never updated by this optimizer)`);
      backup.push(new Float32Array(params.read(i)));
      const corrected = new Float32Array(average.data.length);
      for (let j = 0; j < corrected.length; j++) corrected[j] = average.data[j]! / correction;
      params.write(i, corrected);
    }
    this.trainedBackup = backup;
  }

  restoreTrained(params: ParameterAccess): void {
    if (!this.trainedBackup) throw new OptimizerError('the EMA weights are not applied');
    this.checkParameters(params);
    this.trainedBackup.forEach((values, i) => params.write(i, values));
    this.trainedBackup = undefined;
  }

  getState(): OptimizerState {
    if (this.trainedBackup) throw new OptimizerError('the EMA weights are applied; call restoreTrained() before saving the optimizer state');
    return { format: OPTIMIZER_STATE_FORMAT, components: [...this.prefixes], iterations: this.iterations, microSteps: this.microSteps, slots: this.store.toArrays() };
  }

  /** Restores a state from `getState` of an optimizer with the same composition (copied; slot shapes are checked at the next step). */
  setState(state: OptimizerState): void {
    if (this.trainedBackup) throw new OptimizerError('the EMA weights are applied; call restoreTrained() before loading an optimizer state');
    if (state.format !== OPTIMIZER_STATE_FORMAT) throw new OptimizerError(`optimizer state has format ${String(state.format)}, expected ${OPTIMIZER_STATE_FORMAT}`);
    if (state.components.join(' > ') !== this.description) {
      throw new OptimizerError(`optimizer state was saved by "${state.components.join(' > ')}" and cannot load into "${this.description}"`);
    }
    const k = this.accumulation?.steps ?? 1;
    if (!Number.isInteger(state.iterations) || state.iterations < 0 || !Number.isInteger(state.microSteps) || state.microSteps < 0 || state.microSteps >= k) {
      throw new OptimizerError(`optimizer state has invalid step counters (iterations ${state.iterations}, micro-steps ${state.microSteps})`);
    }
    const problem = this.store.load(state.slots);
    if (problem) throw new OptimizerError(problem);
    this.iterations = state.iterations;
    this.microSteps = state.microSteps;
    this.restoredUnchecked = true;
    this.slotsChecked = false;
  }


  private slotsOf(params: ParameterAccess, index: number, value?: Float32Array): Map<string, Slot> {
    const name = params.names[index]!;
    const existing = this.store.of(name);
    if (existing) return existing;
    const specs = this.slotSpecs(name, params.shape(index));
    const needsValue = specs.some((s) => s.init === 'parameter');
    return this.store.ensure(name, specs, value ?? (needsValue ? params.read(index) : new Float32Array(0)));
  }

  /** Everything that could fail is checked before anything changes: no step is ever half applied. */
  private checkParameters(params: ParameterAccess, grads?: readonly Float32Array[], knownFinite = false): void {
    if (this.paramNames === undefined) {
      this.paramNames = [...params.names];
    } else if (params.names.length !== this.paramNames.length || params.names.some((n, i) => n !== this.paramNames![i])) {
      const i = params.names.findIndex((n, k) => n !== this.paramNames![k]);
      const what = i >= 0 && i < this.paramNames.length ? `parameter ${i} was ${this.paramNames[i]} and is now ${params.names[i]}` : `${this.paramNames.length} parameters before, ${params.names.length} now`;
      throw new OptimizerError(`this optimizer is given a different set of parameters (${what}); use one optimizer per model`);
    }
    if (this.restoredUnchecked) {
      const known = new Set(params.names);
      const stranger = this.store.paramNames().find((n) => !known.has(n));
      if (stranger !== undefined) throw new OptimizerError(`the restored optimizer state has slots for ${stranger}, which this model does not have`);
      if (this.iterations > 0 || this.microSteps > 0) {
        const missing = params.names.find((n, i) => !this.store.of(n) && this.slotSpecs(n, params.shape(i)).length > 0);
        if (missing !== undefined) throw new OptimizerError(`the restored optimizer state (after ${this.iterations} steps) has no slots for ${missing}: it belongs to a different model`);
      }
      this.restoredUnchecked = false;
    }
    if (!this.slotsChecked) {
      params.names.forEach((n, i) => {
        const problem = this.store.problemWith(n, this.slotSpecs(n, params.shape(i)));
        if (problem) throw new OptimizerError(problem);
      });
      this.slotsChecked = true;
    }
    if (!grads) return;
    if (grads.length !== params.names.length) throw new OptimizerError(`${grads.length} gradients for ${params.names.length} parameters`);
    for (let i = 0; i < grads.length; i++) {
      const g = grads[i]!;
      const n = sizeOf(params.shape(i));
      if (g.length !== n) throw new OptimizerError(`gradient of ${params.names[i]} has ${g.length} values, the parameter has ${n}`);
      if (knownFinite) continue;
      // x * 0 is NaN exactly for NaN and infinities: one multiply-add per element, in four
      // independent sums so that the adds do not wait on each other
      let p0 = 0;
      let p1 = 0;
      let p2 = 0;
      let p3 = 0;
      const end4 = g.length & ~3;
      let j = 0;
      for (; j < end4; j += 4) {
        p0 += g[j]! * 0;
        p1 += g[j + 1]! * 0;
        p2 += g[j + 2]! * 0;
        p3 += g[j + 3]! * 0;
      }
      for (; j < g.length; j++) p0 += g[j]! * 0;
      if (p0 + p1 + p2 + p3 !== 0) {
        const at = g.findIndex((x) => !Number.isFinite(x));
        throw new OptimizerError(`gradient of ${params.names[i]} is not finite (${g[at]} at index ${at}); nothing was updated. Lower the learning rate or check the data`);
      }
    }
  }
}
