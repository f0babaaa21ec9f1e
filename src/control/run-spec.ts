/**
 * What a worker must know to hold a replica of the run: sent as JSON in the first
 * Assignment and validated on arrival (a worker trusts the coordinator it authenticated
 * with the token, but a malformed message must still be a clear error, not a crash).
 */
import { z } from 'zod';
import type { Manifest } from '../data/prepare.js';
import { type Application, APPLICATIONS } from '../model/build.js';
import { type BertConfig, parseBertConfig } from '../model/config.js';
import { type OptimizerConfig, parseOptimizerConfig } from '../optim/config.js';

export interface RunSpec {
  readonly runId: string;
  /** Fixes the initial weights, the masks (with epoch and record) and the dropout (with the step). */
  readonly seed: number;
  readonly application: Application;
  readonly model: BertConfig;
  readonly optimizer: OptimizerConfig;
  readonly clipNorm: number;
  readonly recompute: boolean;
  /** Sequences per micro-batch on a worker (gradients accumulated over its share); 0: the whole share at once. */
  readonly microBatch: number;
  /** The data's manifest: the worker decodes the records the coordinator streams with it. */
  readonly manifest: Manifest;
  readonly perTokenFeature: string;
  /** Every collective ends within this time, done or failed. */
  readonly collectiveDeadlineMs: number;
  /** How gradients travel in the all-reduce: 'fp16' halves the bytes (see Trainer). */
  readonly allreduceCompression: 'none' | 'fp16';
  /**
   * Whether the workers shard the optimizer's update (Trainer's shardUpdate: each updates its
   * segment of the parameters and the new values are gathered) where the optimizer allows it.
   */
  readonly shardOptimizer: boolean;
}

const specSchema = z.object({
  runId: z.string().regex(/^[\w.-]{1,100}$/),
  seed: z.number().int().nonnegative(),
  application: z.enum(APPLICATIONS as unknown as [Application, ...Application[]]),
  model: z.unknown(),
  optimizer: z.unknown(),
  clipNorm: z.number().nonnegative(),
  recompute: z.boolean(),
  microBatch: z.number().int().nonnegative(),
  manifest: z.object({ format: z.string(), task: z.string(), maxLength: z.number().int().positive(), vocab: z.object({ size: z.number().int().positive() }).loose() }).loose(),
  perTokenFeature: z.string().min(1),
  collectiveDeadlineMs: z.number().int().positive(),
  // absent from a coordinator that predates it
  allreduceCompression: z.enum(['none', 'fp16']).default('none'),
  shardOptimizer: z.boolean().default(false),
});

export class RunSpecError extends Error {
  override name = 'RunSpecError';
}

export function parseRunSpec(json: string): RunSpec {
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch {
    throw new RunSpecError('the run description from the coordinator is not JSON');
  }
  const result = specSchema.safeParse(raw);
  if (!result.success) {
    throw new RunSpecError(`the run description from the coordinator is invalid: ${result.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  const r = result.data;
  return {
    ...r,
    model: parseBertConfig(r.model, 'the run description (model)'),
    optimizer: parseOptimizerConfig(r.optimizer, 'the run description (optimizer)'),
    manifest: r.manifest as unknown as Manifest,
  };
}
