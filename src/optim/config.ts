import { promises as fs } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { AdaFactor } from './adafactor.js';
import { Adam } from './adam.js';
import { Optimizer } from './optimizer.js';
import type { UpdateWrapper } from './rule.js';
import { Sgd } from './sgd.js';
import { ExponentialMovingAverage, GradientAccumulation, type StepWrapper } from './step-wrappers.js';
import { LayerAdaptation } from './wrappers/layer-adaptation.js';
import { LazyOptimization } from './wrappers/lazy.js';
import { Lookahead } from './wrappers/lookahead.js';
import { ParameterWiseLr } from './wrappers/parameter-wise-lr.js';
import { PiecewiseLinearSchedule } from './wrappers/piecewise-linear.js';
import { WeightDecay } from './wrappers/weight-decay.js';

/** What pretraining leaves out of weight decay and layer adaptation: LayerNorm parameters and biases. */
export const DEFAULT_EXCLUDE = ['Norm', 'bias'];

const regex = z.string().refine(
  (s) => {
    try {
      new RegExp(s);
      return true;
    } catch {
      return false;
    }
  },
  { message: 'not a valid regular expression' },
);
const patterns = z.array(regex);
const positive = z.number().positive();
const unitOpen = z.number().gt(0).lt(1);
const beta1 = z.number().min(0).lt(1);
const stepKey = z.string().regex(/^\d+$/, 'schedule steps must be non-negative integers');

const adamFields = {
  learningRate: positive.optional(),
  beta1: beta1.optional(),
  beta2: unitOpen.optional(),
  epsilon: positive.optional(),
  biasCorrection: z.boolean().optional(),
};
const decayFields = { weightDecay: z.number().min(0).optional(), exclude: patterns.optional() };

const wrapperSchema = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('weightDecay'), rate: z.number().min(0).optional(), exclude: patterns.optional() }),
  z.strictObject({ type: z.literal('layerAdaptation'), exclude: patterns.optional() }),
  z.strictObject({
    type: z.literal('piecewiseLinear'),
    schedule: z.record(stepKey, z.number().min(0)).refine((s) => Object.keys(s).length > 0, { message: 'needs at least one {step: multiplier} knot' }),
  }),
  z.strictObject({ type: z.literal('gradientAccumulation'), steps: z.number().int().positive() }),
  z.strictObject({ type: z.literal('lookahead'), k: z.number().int().positive().optional(), alpha: z.number().gt(0).max(1).optional() }),
  z.strictObject({ type: z.literal('lazy'), include: patterns.optional() }),
  z.strictObject({ type: z.literal('ema'), momentum: unitOpen.optional() }),
  z.strictObject({ type: z.literal('parameterWiseLr'), multipliers: z.record(z.string().min(1), z.number().min(0)) }),
]);

const STEP_LEVEL = new Set(['gradientAccumulation', 'ema']);
const wrappers = z
  .array(wrapperSchema)
  .optional()
  .superRefine((list, ctx) => {
    if (!list) return;
    let firstStepLevel = -1;
    list.forEach((w, i) => {
      if (STEP_LEVEL.has(w.type)) {
        if (firstStepLevel < 0) firstStepLevel = i;
        if (list.findIndex((o) => o.type === w.type) !== i) ctx.addIssue({ code: 'custom', path: [i, 'type'], message: `${w.type} may appear only once` });
      } else if (firstStepLevel >= 0) {
        ctx.addIssue({
          code: 'custom',
          path: [i, 'type'],
          message: `${w.type} comes after ${list[firstStepLevel]!.type}, which acts on whole optimizer steps; put gradientAccumulation and ema last`,
        });
      }
    });
  });

const optimizerSchema = z.discriminatedUnion('type', [
  z.strictObject({
    type: z.literal('adafactor'),
    learningRate: positive.nullable().optional(),
    beta1: beta1.optional(),
    beta2: unitOpen.nullable().optional(),
    epsilon1: positive.optional(),
    epsilon2: z.number().min(0).optional(),
    multiplyByParameterScale: z.boolean().optional(),
    excludeFromParameterScale: patterns.optional(),
    clippingThreshold: positive.nullable().optional(),
    minDimSizeToFactor: z.number().int().positive().optional(),
    wrappers,
  }),
  z.strictObject({ type: z.literal('adam'), ...adamFields, wrappers }),
  z.strictObject({ type: z.literal('adamw'), ...adamFields, ...decayFields, wrappers }),
  z.strictObject({ type: z.literal('lamb'), ...adamFields, ...decayFields, wrappers }),
  z.strictObject({ type: z.literal('sgd'), learningRate: positive.optional(), momentum: z.number().min(0).lt(1).optional(), nesterov: z.boolean().optional(), wrappers }),
]);

export type OptimizerConfig = z.infer<typeof optimizerSchema>;
export type WrapperConfig = z.infer<typeof wrapperSchema>;
export const OPTIMIZER_TYPES = ['adafactor', 'adam', 'adamw', 'lamb', 'sgd'] as const;
export const WRAPPER_TYPES = ['weightDecay', 'layerAdaptation', 'piecewiseLinear', 'gradientAccumulation', 'lookahead', 'lazy', 'ema', 'parameterWiseLr'] as const;

export class OptimizerConfigError extends Error {
  override name = 'OptimizerConfigError';
}

function describeIssue(issue: z.core.$ZodIssue, raw: unknown): string {
  const where = ['optimizer', ...issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`))].join('').replace(/\.\[/g, '[');
  if (issue.code === 'invalid_union' && issue.path[issue.path.length - 1] === 'type') {
    // an unknown or missing discriminator: say which types exist
    let node: unknown = raw;
    for (const p of issue.path.slice(0, -1)) node = (node as Record<string | number, unknown> | undefined)?.[p as string | number];
    const type = (node as { type?: unknown } | undefined)?.type;
    const isWrapper = issue.path.includes('wrappers');
    const known = isWrapper ? WRAPPER_TYPES : OPTIMIZER_TYPES;
    return type === undefined
      ? `${where}: missing; use one of ${known.join(', ')}`
      : `${where}: unknown ${isWrapper ? 'wrapper' : 'optimizer'} type ${JSON.stringify(type)}; use one of ${known.join(', ')}`;
  }
  if (issue.code === 'invalid_key') return `${where}: ${issue.issues.map((i) => i.message).join('; ')}`;
  if (issue.code === 'unrecognized_keys') return `${where}: unknown option${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}`;
  return `${where}: ${issue.message}`;
}

/** Validates an optimizer description; `source` names where it came from (a file, a flag). */
export function parseOptimizerConfig(raw: unknown, source = 'the optimizer config'): OptimizerConfig {
  const result = optimizerSchema.safeParse(raw);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => describeIssue(issue, raw));
  throw new OptimizerConfigError(`invalid optimizer in ${source}:\n  ${problems.join('\n  ')}`);
}

/** Reads a JSON or YAML optimizer description: inline (starting with `{`) or a file path. */
export async function readOptimizerConfig(spec: string): Promise<OptimizerConfig> {
  if (spec.trimStart().startsWith('{')) {
    let raw: unknown;
    try {
      raw = JSON.parse(spec);
    } catch (err) {
      throw new OptimizerConfigError(`the inline optimizer config is not valid JSON: ${(err as Error).message}`);
    }
    return parseOptimizerConfig(raw, 'the inline optimizer config');
  }
  let text: string;
  try {
    text = await fs.readFile(spec, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new OptimizerConfigError(code === 'ENOENT' ? `optimizer config file ${spec} does not exist` : `cannot read optimizer config file ${spec}: ${(err as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = parseYaml(text); // YAML 1.2 is a superset of JSON: one parser for both
  } catch (err) {
    throw new OptimizerConfigError(`optimizer config file ${spec} is neither valid JSON nor YAML: ${(err as Error).message}`);
  }
  const doc = raw as { optimizer?: unknown } | null;
  // a whole run config may hold the optimizer under `optimizer`
  return parseOptimizerConfig(doc && typeof doc === 'object' && 'optimizer' in doc ? doc.optimizer : raw, `optimizer config file ${spec}`);
}

function buildWrapper(w: WrapperConfig): UpdateWrapper | StepWrapper {
  switch (w.type) {
    case 'weightDecay':
      return new WeightDecay(w.rate ?? 0.01, w.exclude ?? DEFAULT_EXCLUDE);
    case 'layerAdaptation':
      return new LayerAdaptation(w.exclude ?? DEFAULT_EXCLUDE);
    case 'piecewiseLinear':
      return new PiecewiseLinearSchedule(w.schedule);
    case 'gradientAccumulation':
      return new GradientAccumulation(w.steps);
    case 'lookahead':
      return new Lookahead(w.k ?? 5, w.alpha ?? 0.5);
    case 'lazy':
      return new LazyOptimization(w.include);
    case 'ema':
      return new ExponentialMovingAverage(w.momentum ?? 0.999);
    case 'parameterWiseLr':
      return new ParameterWiseLr(w.multipliers);
  }
}

function withoutUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * Builds the optimizer a config describes. `adamw` is Adam + weightDecay; `lamb` is Adam
 * without bias correction + weightDecay + layerAdaptation (bert4keras's pretraining
 * LAMB); the config's own wrappers follow, in the written order.
 */
export function createOptimizer(input: OptimizerConfig | unknown): Optimizer {
  const config = parseOptimizerConfig(input);
  const built = (config.wrappers ?? []).map(buildWrapper);
  const pre: UpdateWrapper[] = [];
  let base;
  switch (config.type) {
    case 'adafactor': {
      const { type: _t, wrappers: _w, ...options } = config;
      base = new AdaFactor(withoutUndefined(options));
      break;
    }
    case 'adam':
    case 'adamw':
    case 'lamb': {
      const { learningRate, beta1: b1, beta2, epsilon, biasCorrection } = config;
      base = new Adam(withoutUndefined({ learningRate, beta1: b1, beta2, epsilon, biasCorrection: biasCorrection ?? (config.type === 'lamb' ? false : undefined) }));
      if (config.type !== 'adam') {
        const exclude = config.exclude ?? DEFAULT_EXCLUDE;
        pre.push(new WeightDecay(config.weightDecay ?? 0.01, exclude));
        if (config.type === 'lamb') pre.push(new LayerAdaptation(exclude));
      }
      break;
    }
    case 'sgd': {
      const { type: _t, wrappers: _w, ...options } = config;
      base = new Sgd(withoutUndefined(options));
      break;
    }
  }
  const updateWrappers = built.filter((w): w is UpdateWrapper => !(w instanceof GradientAccumulation || w instanceof ExponentialMovingAverage));
  const stepWrappers = built.filter((w): w is StepWrapper => w instanceof GradientAccumulation || w instanceof ExponentialMovingAverage);
  return new Optimizer(base, [...pre, ...updateWrappers], stepWrappers);
}
