/**
 * What this machine's first two cores give, alone and together, with no communication: one
 * process pinned to core 0, one pinned to core 1, then two at once (one on each), each
 * running forward+backward of the same model on the same batch for the same seconds.
 * - `ceiling`: the pair's samples/s over the sum of the lone runs'. Below 1, the cores slow
 *   each other down (a shared host core, memory); no data-parallel run can beat it.
 * - `coreSpeedRatio`: the slower core's speed over the faster's. The vCPUs here are not
 *   equal, and which one is slower changes from minute to minute: a 1-worker run on the
 *   faster core caps the 2-worker scaling efficiency at (1 + ratio) / 2.
 * Without `taskset` nothing is pinned: both lone runs land where the scheduler puts them.
 *
 * `measureCoreCeiling` runs in the benchmark; this file is also the child it starts
 * (`node dist/bench/core-ceiling.js '<json>'`): it builds the model, runs one step, prints
 * `ready`, waits for a line on stdin, and prints its figures as one JSON line.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { type BackendChoice, selectBackend } from '../src/backend/index.js';
import { buildTransformer } from '../src/model/build.js';
import { presetConfig } from '../src/model/config.js';
import { PretrainingObjective } from '../src/train/step.js';
import { mlmBatch } from './common.js';

export interface CeilingJob {
  preset: string;
  vocab: number;
  seq: number;
  /** Sequences per forward+backward. */
  batch: number;
  /** How long each process runs once every process is ready. */
  seconds: number;
  backend: string;
}

export interface CoreCeiling {
  /** Mean milliseconds of one forward+backward: alone on core 0 and on core 1, and each of the pair. */
  aloneMs: [number, number];
  pairMs: [number, number];
  ceiling: number;
  coreSpeedRatio: number;
  pinned: boolean;
}

const SELF = fileURLToPath(import.meta.url);
const READY_TIMEOUT_MS = 180_000;

/** Runs one child per entry at once, pinned to that core (undefined: not pinned); resolves with each one's mean milliseconds per forward+backward. */
async function runTogether(job: CeilingJob, cores: readonly (number | undefined)[]): Promise<number[]> {
  const children: ChildProcess[] = [];
  const timeout = setTimeout(() => children.forEach((c) => c.kill('SIGKILL')), READY_TIMEOUT_MS + 4 * job.seconds * 1000);
  try {
    const results = cores.map((core) => {
      const command = [process.execPath, SELF, JSON.stringify(job)];
      const pinned = core === undefined ? command : ['taskset', '-c', String(core), ...command];
      const child = spawn(pinned[0]!, pinned.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
      children.push(child);
      const lines = createInterface({ input: child.stdout! });
      let resolveReady!: () => void;
      const ready = new Promise<void>((resolve) => (resolveReady = resolve));
      const figures = new Promise<number>((resolve, reject) => {
        let meanMs: number | undefined;
        lines.on('line', (line) => {
          if (line === 'ready') resolveReady();
          else if (line.startsWith('{')) meanMs = (JSON.parse(line) as { meanMs: number }).meanMs;
        });
        child.once('exit', (code, signal) => {
          if (meanMs !== undefined && code === 0) resolve(meanMs);
          else reject(new Error(`the core-ceiling child exited with ${signal ?? `code ${code}`} before its figures`));
        });
      });
      // a child that dies before it is ready must not leave the others waiting
      figures.catch(() => resolveReady());
      return { ready, figures };
    });
    await Promise.all(results.map((r) => r.ready));
    for (const child of children) child.stdin!.end('go\n');
    return await Promise.all(results.map((r) => r.figures));
  } finally {
    clearTimeout(timeout);
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  }
}

function hasTaskset(): boolean {
  return spawnSync('taskset', ['-c', '0', 'true']).status === 0 && availableParallelism() >= 2;
}

/** Core 0 alone, core 1 alone, then both at once (the pair first when `pairFirst`). */
export async function measureCoreCeiling(job: CeilingJob, pairFirst = false): Promise<CoreCeiling> {
  const pinned = hasTaskset();
  const [first, second] = pinned ? [0, 1] : [undefined, undefined];
  const runs: (readonly (number | undefined)[])[] = [[first], [second], [first, second]];
  const means = new Map<number, number[]>();
  for (const i of pairFirst ? [2, 0, 1] : [0, 1, 2]) means.set(i, await runTogether(job, runs[i]!));
  const aloneMs: [number, number] = [means.get(0)![0]!, means.get(1)![0]!];
  const pairMs: [number, number] = [means.get(2)![0]!, means.get(2)![1]!];
  const speed = (ms: number): number => 1 / ms;
  return {
    aloneMs,
    pairMs,
    ceiling: (speed(pairMs[0]) + speed(pairMs[1])) / (speed(aloneMs[0]) + speed(aloneMs[1])),
    coreSpeedRatio: Math.min(...aloneMs) / Math.max(...aloneMs),
    pinned,
  };
}

async function child(job: CeilingJob): Promise<void> {
  await selectBackend(job.backend as BackendChoice);
  const model = buildTransformer(presetConfig(job.preset, job.vocab, { max_position_embeddings: Math.max(512, job.seq) }), { seed: 1 });
  const objective = new PretrainingObjective(model);
  const batch = mlmBatch(1, job.batch, job.seq, job.vocab);
  const pass = (seed: number): void => tf.dispose(objective.compute(batch, { dropoutSeed: seed, normalizer: 1 }).grads);
  pass(0);
  console.log('ready');
  await new Promise<void>((resolve) => process.stdin.once('data', () => resolve()));
  const until = performance.now() + job.seconds * 1000;
  let spent = 0;
  let passes = 0;
  do {
    const started = performance.now();
    pass(++passes);
    spent += performance.now() - started;
  } while (performance.now() < until);
  console.log(JSON.stringify({ meanMs: spent / passes, passes }));
  process.exit(0);
}

if (process.argv[1] === SELF) await child(JSON.parse(process.argv[2]!) as CeilingJob);
