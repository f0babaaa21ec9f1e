/**
 * What this machine's first two cores give, alone and together, with no communication: a
 * process pinned to core 0 and one pinned to core 1 run forward+backward of the same model
 * on the same batch, in short phases that take turns (core 0 alone, core 1 alone, both at
 * once, three times over, the order rotating), so that a machine whose speed drifts from
 * minute to minute drifts alike in every kind of phase.
 * - `ceiling`: the pair's samples/s over the sum of the lone runs'. Below 1, the cores slow
 *   each other down (a shared host core, memory); no data-parallel run can beat it.
 * - `coreSpeedRatio`: the slower core's speed over the faster's. A 1-worker run on the
 *   faster core caps the 2-worker scaling efficiency at (1 + ratio) / 2.
 * Without `taskset` nothing is pinned: each process runs where the scheduler puts it.
 *
 * `measureCoreCeiling` runs in the benchmark; this file is also the child it starts
 * (`node dist/bench/core-ceiling.js '<json>'`): it builds the model, runs one pass, prints
 * `ready`, then for each line `run <ms>` on stdin runs passes for that long and prints one
 * JSON line of their count and milliseconds; `stop` (or the end of stdin) ends it.
 */
import { spawn, spawnSync } from 'node:child_process';
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
  /** Seconds of each kind of phase (core 0 alone, core 1 alone, both) in all, over the turns. */
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
/** Each kind of phase (core 0, core 1, both) runs this many times, in turns. */
const TURNS = 3;

interface Child {
  /** Resolves once the child has built its model and run one pass. */
  ready(): Promise<void>;
  /** Runs passes for `ms`; resolves with their count and total milliseconds. */
  run(ms: number): Promise<{ passes: number; spentMs: number }>;
  stop(): void;
}

function startChild(job: CeilingJob, core: number | undefined): Child {
  const command = [process.execPath, SELF, JSON.stringify(job)];
  const pinned = core === undefined ? command : ['taskset', '-c', String(core), ...command];
  const child = spawn(pinned[0]!, pinned.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  const waiting: { resolve: (line: string) => void; reject: (e: Error) => void }[] = [];
  let failure: Error | undefined;
  const fail = (e: Error): void => {
    failure ??= e;
    for (const w of waiting.splice(0)) w.reject(failure);
  };
  lines.on('line', (line) => waiting.shift()?.resolve(line));
  child.once('exit', (code, signal) => fail(new Error(`the core-ceiling child exited with ${signal ?? `code ${code}`}`)));
  // a failed spawn, or a write to a child that is gone: a rejection, not an uncaught error
  child.on('error', (e) => fail(new Error(`the core-ceiling child failed: ${e.message}`)));
  child.stdin!.on('error', (e) => fail(new Error(`cannot write to the core-ceiling child: ${e.message}`)));
  const nextLine = (timeoutMs: number): Promise<string> =>
    new Promise((resolve, reject) => {
      if (failure) return reject(failure);
      const waiter = {
        resolve: (line: string) => (clearTimeout(timer), resolve(line)),
        reject: (e: Error) => (clearTimeout(timer), reject(e)),
      };
      const timer = setTimeout(() => {
        waiting.splice(waiting.indexOf(waiter), 1);
        child.kill('SIGKILL');
        reject(new Error(`the core-ceiling child said nothing for ${Math.round(timeoutMs / 1000)} s`));
      }, timeoutMs);
      waiting.push(waiter);
    });
  return {
    async ready() {
      const line = await nextLine(READY_TIMEOUT_MS);
      if (line !== 'ready') throw new Error(`the core-ceiling child said ${JSON.stringify(line)} instead of ready`);
    },
    async run(ms) {
      if (failure) throw failure;
      child.stdin!.write(`run ${ms}\n`);
      // a pass may take seconds and the last one ends past the phase
      return JSON.parse(await nextLine(ms + READY_TIMEOUT_MS)) as { passes: number; spentMs: number };
    },
    stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

function hasTaskset(): boolean {
  return spawnSync('taskset', ['-c', '0', 'true']).status === 0 && availableParallelism() >= 2;
}

/** `job.seconds` of each kind of phase in all, in turns; `rotate` shifts which kind goes first. */
export async function measureCoreCeiling(job: CeilingJob, rotate = 0): Promise<CoreCeiling> {
  const pinned = hasTaskset();
  const children: Child[] = [];
  try {
    // both are stopped below, whichever of them fails to start
    children.push(startChild(job, pinned ? 0 : undefined), startChild(job, pinned ? 1 : undefined));
    await Promise.all(children.map((c) => c.ready()));
    const [zero, one] = children as [Child, Child];
    // passes and milliseconds per child: alone, and in the pair
    type Tally = { passes: number; spentMs: number };
    const tally = (): Tally => ({ passes: 0, spentMs: 0 });
    const [alone, pair] = [[tally(), tally()], [tally(), tally()]];
    const add = (into: Tally, r: Tally): void => {
      into.passes += r.passes;
      into.spentMs += r.spentMs;
    };
    const phaseMs = (1000 * job.seconds) / TURNS;
    const kinds = [
      async () => add(alone[0]!, await zero.run(phaseMs)),
      async () => add(alone[1]!, await one.run(phaseMs)),
      async () => (await Promise.all([zero.run(phaseMs), one.run(phaseMs)])).forEach((r, i) => add(pair[i]!, r)),
    ];
    for (let turn = 0; turn < TURNS; turn++) {
      for (let k = 0; k < kinds.length; k++) await kinds[(k + turn + rotate) % kinds.length]!();
    }
    const meanMs = (t: Tally): number => t.spentMs / t.passes;
    const aloneMs: [number, number] = [meanMs(alone[0]!), meanMs(alone[1]!)];
    const pairMs: [number, number] = [meanMs(pair[0]!), meanMs(pair[1]!)];
    const speed = (ms: number): number => 1 / ms;
    return {
      aloneMs,
      pairMs,
      ceiling: (speed(pairMs[0]) + speed(pairMs[1])) / (speed(aloneMs[0]) + speed(aloneMs[1])),
      coreSpeedRatio: Math.min(...aloneMs) / Math.max(...aloneMs),
      pinned,
    };
  } finally {
    for (const c of children) c.stop();
  }
}

async function child(job: CeilingJob): Promise<void> {
  await selectBackend(job.backend as BackendChoice);
  const model = buildTransformer(presetConfig(job.preset, job.vocab, { max_position_embeddings: Math.max(512, job.seq) }), { seed: 1 });
  const objective = new PretrainingObjective(model);
  const batch = mlmBatch(1, job.batch, job.seq, job.vocab);
  const pass = (seed: number): void => tf.dispose(objective.compute(batch, { dropoutSeed: seed, normalizer: 1 }).grads);
  pass(0);
  console.log('ready');
  let passes = 0;
  for await (const line of createInterface({ input: process.stdin })) {
    const [command, arg] = line.split(' ');
    if (command !== 'run') break;
    const until = performance.now() + Number(arg);
    let spentMs = 0;
    let count = 0;
    do {
      const started = performance.now();
      pass(++passes);
      spentMs += performance.now() - started;
      count++;
    } while (performance.now() < until);
    console.log(JSON.stringify({ passes: count, spentMs }));
  }
  process.exit(0);
}

if (process.argv[1] === SELF) await child(JSON.parse(process.argv[2]!) as CeilingJob);
