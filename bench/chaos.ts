/**
 * npm run chaos: a run on loopback under randomized faults, restarted as Kubernetes would
 * restart it. Workers are SIGKILLed at random steps and a new one started in their place;
 * the coordinator is SIGKILLed and started again with --resume on the same address; one
 * worker is SIGSTOPped once. At the end the journal is audited (every record of the run's
 * epochs exactly once) and the replicas' digests, compared after every step, must never have
 * differed.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { nonNegativeInt, positiveInt } from '../src/cli/common.js';
import { prepare } from '../src/data/prepare.js';
import { seededRandom } from '../src/data/masking.js';
import { freePort } from './common.js';

const COORDINATOR = fileURLToPath(new URL('../coordinator/cli.js', import.meta.url));
const WORKER = fileURLToPath(new URL('../worker/cli.js', import.meta.url));
const SAMPLE = fileURLToPath(new URL('../../data/sample/', import.meta.url));

interface Options {
  steps: number;
  workers: number;
  workerKills: number;
  coordinatorKills: number;
  seed: number;
  backend: string;
  shardOptimizer: boolean;
  log?: string;
}

function parse(argv: string[]): Options {
  const program = new Command('chaos')
    .description('A training run under SIGKILLed workers, a SIGKILLed coordinator and a SIGSTOPped worker, each restarted; then the audit')
    .option('--steps <n>', 'steps of the run', positiveInt, 200)
    .option('--workers <n>', 'workers of the run', positiveInt, 3)
    .option('--worker-kills <n>', 'workers SIGKILLed at random steps', nonNegativeInt, 5)
    .option('--coordinator-kills <n>', 'coordinator SIGKILLs at random steps', nonNegativeInt, 2)
    .option('--seed <n>', 'seed of the fault schedule', nonNegativeInt, 1)
    .option('--backend <name>', 'backend of the workers', 'cpu')
    .option('--shard-optimizer', 'AdaFactor (matrices of 16 and more factored) with its update sharded across the workers (coordinator start --shard-optimizer), instead of Adam', false)
    .option('--log <file>', 'write the coordinators\' whole output to this file');
  program.parse(argv, { from: 'user' });
  return program.opts<Options>();
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const random = seededRandom(o.seed, 0xc4a05);
  const dir = await mkdtemp(path.join(tmpdir(), 'chaos-'));
  const children = new Set<ChildProcess>();
  let output = '';
  const pids = new Set<number>();
  const joined = new Set<number>();
  const kill = (pid: number, signal: NodeJS.Signals) => {
    try {
      process.kill(pid, signal);
    } catch {
      // gone already
    }
  };
  try {
    const data = path.join(dir, 'data');
    await prepare({ corpus: [path.join(SAMPLE, 'corpus.txt')], vocab: path.join(SAMPLE, 'vocab.txt'), out: data, task: 'mlm', maxLength: 32, seed: 1, recordsPerShard: 2000, documents: 'blank-line', lowerCase: true, force: false });
    const runDir = path.join(dir, 'run');
    const port = await freePort();
    const common = [
      '--data', data, '--preset', 'L1-H32', '--backend', o.backend, '--steps', String(o.steps), '--global-batch', '6', '--workers', String(o.workers), '--min-workers', '1',
      '--listen', `127.0.0.1:${port}`, '--checkpoint-every', '10', '--checksum-every', '1', '--heartbeat-timeout', '5', '--log-every', '1',
      ...(o.shardOptimizer ? ['--optimizer', '{"type":"adafactor","learningRate":0.01,"minDimSizeToFactor":16}', '--shard-optimizer'] : ['--optimizer', '{"type":"adam","learningRate":0.01}']),
      // the human lines, which this harness reads (stdout is a pipe: auto would be JSON)
      '--log-format', 'text',
    ];
    // the fault schedule: distinct steps, coordinator kills apart from the rest
    const steps = new Set<number>();
    const pick = () => {
      for (;;) {
        const s = 3 + Math.floor(random() * (o.steps - 6));
        if (!steps.has(s) && !steps.has(s - 1) && !steps.has(s + 1)) return steps.add(s), s;
      }
    };
    const events = [
      ...Array.from({ length: o.workerKills }, () => ({ step: pick(), kind: 'worker' as const })),
      ...Array.from({ length: o.coordinatorKills }, () => ({ step: pick(), kind: 'coordinator' as const })),
      { step: pick(), kind: 'stop' as const },
    ].sort((a, b) => a.step - b.step);
    console.log(`faults (step: kind): ${events.map((e) => `${e.step}: ${e.kind}`).join(', ')}`);

    let coordinator: ChildProcess;
    const startCoordinator = (resume: boolean) => {
      const args = resume ? ['start', '--resume', runDir, '--local-workers', '0', ...common] : ['start', '--run-dir', runDir, '--local-workers', String(o.workers), ...common];
      const child = spawn(process.execPath, [COORDINATOR, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      children.add(child);
      const take = (d: Buffer) => {
        output += d.toString();
        // workers that are in the run: local ones print their pid, ours are named host:pid
        for (const m of d.toString().matchAll(/joined run .*\(pid (\d+)|\([^():\s]+:(\d+), \w+\) joined/g)) {
          const pid = Number(m[1] ?? m[2]);
          pids.add(pid);
          joined.add(pid);
        }
      };
      child.stdout!.on('data', take);
      child.stderr!.on('data', take);
      return child;
    };
    const startWorker = () => {
      const token = readFileSync(path.join(runDir, 'join-token'), 'utf8').trim();
      // unnamed, a worker is host:pid in the coordinator's log
      const child = spawn(process.execPath, [WORKER, 'start', '--coordinator', `127.0.0.1:${port}`, '--backend', o.backend], { stdio: 'ignore', detached: true, env: { ...process.env, PRETRAIN_TOKEN: token } });
      children.add(child);
      pids.add(child.pid!);
    };
    /** Waits (up to a minute) until the ring is back to its size, as it would be between faults. */
    const ringWhole = async () => {
      const until = Date.now() + 60_000;
      while (Date.now() < until && exited === undefined) {
        const size = Number([...output.matchAll(/workers (\d+)/g)].at(-1)?.[1] ?? 0);
        if (size >= o.workers) return;
        await sleep(100);
      }
    };
    const lastStep = () => Math.max(0, ...[...output.matchAll(/^step +(\d+)\//gm)].map((m) => Number(m[1])));
    const live = () => [...pids].filter((pid) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        pids.delete(pid);
        return false;
      }
    });

    let exited: number | null | undefined;
    coordinator = startCoordinator(false);
    const counts = { workerKills: 0, coordinatorKills: 0 };
    const deadline = Date.now() + 20 * 60_000;
    coordinator.on('exit', (code) => (exited = code));
    for (const event of events) {
      while (lastStep() < event.step && exited === undefined) {
        if (Date.now() > deadline) throw new Error(`chaos: no progress; output:\n${output.slice(-3000)}`);
        await sleep(50);
      }
      if (exited !== undefined) break;
      await ringWhole();
      if (exited !== undefined) break;
      const workers = live().filter((pid) => joined.has(pid));
      if (event.kind === 'coordinator') {
        coordinator.kill('SIGKILL');
        await new Promise((r) => coordinator.once('exit', r));
        counts.coordinatorKills++;
        console.log(`step ${event.step}: coordinator SIGKILLed; restarted with --resume`);
        exited = undefined;
        coordinator = startCoordinator(true);
        coordinator.on('exit', (code) => (exited = code));
      } else {
        const victim = workers[Math.floor(random() * workers.length)];
        if (victim === undefined) {
          console.log(`step ${event.step}: no worker in the ring to fault; skipped`);
          continue;
        }
        if (event.kind === 'worker') {
          kill(victim, 'SIGKILL');
          counts.workerKills++;
          console.log(`step ${event.step}: worker pid ${victim} SIGKILLed; a new one started`);
        } else {
          kill(victim, 'SIGSTOP');
          console.log(`step ${event.step}: worker pid ${victim} SIGSTOPped`);
          // a member is dropped after the heartbeat timeout; a worker not (yet) in the ring
          // is simply left out: either way it is SIGKILLed after a while, as a liveness probe would
          const seen = output.length;
          const giveUp = Date.now() + 20_000;
          while (!/is gone|aborted/.test(output.slice(seen)) && Date.now() < giveUp) await sleep(100);
          kill(victim, 'SIGKILL');
          kill(victim, 'SIGCONT');
          console.log(`  ... ${/is gone|aborted/.test(output.slice(seen)) ? 'dropped by the coordinator' : 'not in the ring (left out)'}; SIGKILLed, a new one started`);
        }
        pids.delete(victim);
        await sleep(500);
        startWorker();
      }
    }
    while (exited === undefined && Date.now() < deadline) await sleep(100);
    if (exited !== 0) throw new Error(`chaos: the coordinator exited with ${String(exited)}; output:\n${output.slice(-3000)}`);

    const audit = await new Promise<string>((resolve) => {
      const child = spawn(process.execPath, [COORDINATOR, 'audit', runDir, '--json'], { stdio: ['ignore', 'pipe', 'inherit'] });
      let text = '';
      child.stdout!.on('data', (d: Buffer) => (text += d.toString()));
      child.on('exit', () => resolve(text));
    });
    const report = JSON.parse(audit) as { ok: boolean; epochs: { missing: number; repeated: number; exactlyOnce: number }[] };
    const samplesLost = report.epochs.reduce((n, e) => n + e.missing, 0);
    const samplesRepeated = report.epochs.reduce((n, e) => n + e.repeated, 0);
    const replicasIdentical = !/diverged/.test(output) && /replicas identical in \d+ check/.test(output);
    const stepsCompleted = lastStep();
    const finalWorkers = Number([...output.matchAll(/workers (\d+)/g)].at(-1)?.[1] ?? 0);
    console.log(`membership changes: ${[...output.matchAll(/going on with \d+/g)].length}; workers at the end: ${finalWorkers}`);
    console.log(`\naudit: ${report.epochs.map((e) => `${e.exactlyOnce} records exactly once, ${e.missing} missing, ${e.repeated} repeated`).join('; ')}`);
    console.log(`reproduce: npm run chaos -- --steps ${o.steps} --workers ${o.workers} --worker-kills ${o.workerKills} --coordinator-kills ${o.coordinatorKills} --seed ${o.seed} --backend ${o.backend}${o.shardOptimizer ? ' --shard-optimizer' : ''}`);
    console.log(JSON.stringify({ ...counts, samplesLost, samplesRepeated, replicasIdentical, stepsCompleted }));
  } finally {
    if (o.log) writeFileSync(o.log, output);
    for (const child of children) child.kill('SIGKILL');
    for (const pid of pids) kill(pid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
process.exit();
