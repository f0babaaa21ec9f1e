/**
 * The coordinator under faults, with real processes on 127.0.0.1: fenced reports, every
 * worker lost, too few workers for a while, a worker that keeps failing, mutual TLS on the
 * control plane, and a restarted coordinator that continues its run directory by itself.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { JoinToken } from '../src/comm/auth.js';
import { admissibleAt } from '../src/coordinator/coordinator.js';
import { ControlClient, ControlError } from '../src/control/client.js';
import type { Instruction } from '../src/control/messages.js';
import { prepareRunData, runScript } from './helpers.js';
import { collect, exitOf, killQuietly, waitFor, workerPid } from './fixtures/processes.js';
import { makePki, type Pki } from './fixtures/pki.js';

const CLI = fileURLToPath(new URL('../coordinator/cli.js', import.meta.url));
const WORKER_CLI = fileURLToPath(new URL('../worker/cli.js', import.meta.url));

let dir: string;
let data: string;

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'coordinator-faults-'));
  data = (await prepareRunData(dir)).mlm;
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A small run on cpu: L1-H32, Adam, batches of 4, as many steps as a test lets it take. */
function runArgs(runDir: string, localWorkers: number, extra: string[] = []): string[] {
  // the human lines, which these tests read (the JSON log: tests/logs.test.ts)
  return ['start', '--log-format', 'text', '--run-dir', runDir, '--local-workers', String(localWorkers), '--backend', 'cpu', '--preset', 'L1-H32', '--data', data, '--steps', '1000', '--global-batch', '4', '--checkpoint-every', '1000', '--log-every', '1', '--optimizer', '{"type":"adam","learningRate":0.01}', ...extra];
}

function address(text: string): string {
  return /listening on (\S+)/.exec(text)![1]!;
}

function lastStep(text: string): number {
  return Math.max(0, ...[...text.matchAll(/^step +(\d+)\//gm)].map((m) => Number(m[1])));
}

describe('backoff of a worker that keeps failing', () => {
  it('the first failure is free; then the wait doubles per failure, up to 5 min; failures older than 30 min are forgiven', () => {
    const now = 10_000_000;
    assert.equal(admissibleAt([], now, 10_000), 0);
    assert.equal(admissibleAt([now - 1000], now, 10_000), 0);
    assert.equal(admissibleAt([now - 5000, now - 1000], now, 10_000), now - 1000 + 10_000);
    assert.equal(admissibleAt([now - 9000, now - 5000, now - 1000], now, 10_000), now - 1000 + 20_000);
    assert.equal(admissibleAt(Array.from({ length: 12 }, (_, i) => now - 12_000 + i * 1000), now, 10_000), now - 1000 + 5 * 60_000);
    assert.equal(admissibleAt([now - 31 * 60_000, now - 1000], now, 10_000), 0, 'one recent failure');
    assert.equal(admissibleAt([now - 5000, now - 1000], now, 0), 0, '--failure-backoff 0');
  });
});

describe('coordinator under faults (real processes on 127.0.0.1)', () => {
  it('refuses a worker of another protocol version, and a report or a claim of an older generation or of a step it does not await (fenced), naming why', async () => {
    const runDir = path.join(dir, 'fenced');
    const child = spawn(process.execPath, [CLI, ...runArgs(runDir, 0, ['--workers', '1', '--join-timeout', '30'])], { stdio: ['ignore', 'pipe', 'pipe'] });
    const output = collect(child);
    let client: ControlClient | undefined;
    try {
      await waitFor(() => /listening on/.test(output.text), 30_000, () => output.text);
      // a worker of our own making, to send what a real one never would
      client = new ControlClient(address(output.text), new JoinToken(readFileSync(path.join(runDir, 'join-token'), 'utf8').trim()));
      // a worker of another version is turned away at the door
      await assert.rejects(client.join({ name: 'old', backend: 'cpu', freeMemoryBytes: 0, runId: '', heldStep: 0, generation: 0, protocol: 1 }, 10_000), /refused this worker: the worker speaks control protocol 1, this coordinator 2: run the same version/);
      const { workerId } = await client.join({ name: 'forger', backend: 'cpu', freeMemoryBytes: 0, runId: '', heldStep: 0, generation: 0 }, 10_000);
      const instructions: Instruction[] = [];
      const stream = client.instructions(workerId, '127.0.0.1:9');
      stream.on('data', (i: Instruction) => instructions.push(i));
      stream.on('error', () => undefined);
      await waitFor(() => instructions.some((i) => i.kind === 'work'), 30_000, () => JSON.stringify(instructions.map((i) => i.kind)));
      const assigned = instructions.find((i) => i.kind === 'assign')!;
      assert.ok(assigned.kind === 'assign' && assigned.assign.generation >= 1);
      const generation = assigned.assign.generation;
      const report = { workerId, ok: true, error: '', loss: 1, accuracy: 0, targets: 1, gradNorm: 0, learningRate: 0, computeSeconds: 0, reduceSeconds: 0, tokens: 1, paramDigest: '', forwardBackwardSeconds: 0, copySeconds: 0, applySeconds: 0, samples: 1, positions: 0 };
      const claimRefusal = (claim: { generation: number; step: number }) => client!.claim({ workerId, sequence: 1, ...claim }).then(() => 'granted', (e: Error) => e.message);
      assert.match(await claimRefusal({ generation: generation - 1, step: 1 }), new RegExp(`claim for step 1 refused: it is of generation ${generation - 1}, the run is at generation ${generation}`));
      assert.match(await claimRefusal({ generation, step: 7 }), /claim for step 7 refused: step 1 is in progress/);
      // one worker claims the shorter half of the global batch of 4 too, a record at a time (as two would), then nothing is left
      const claimed = [];
      for (let sequence = 1; sequence <= 2; sequence++) {
        const piece = await client.claim({ workerId, generation, step: 1, sequence });
        claimed.push([piece.firstSample, piece.records.length]);
      }
      assert.deepEqual(claimed, [[2, 1], [3, 1]], 'one worker: the shorter half, in the pieces two would take');
      assert.deepEqual((await client.claim({ workerId, generation, step: 1, sequence: 3 })).records, [], 'one worker: then nothing of step 1 is left to claim');
      assert.match(String(await client.report({ ...report, generation: generation - 1, step: 1 })), new RegExp(`report of step 1 refused: it is of generation ${generation - 1}, the run is at generation ${generation}`));
      assert.match(String(await client.report({ ...report, generation, step: 7 })), /report of step 7 refused: step 1 is awaited/);
      assert.doesNotMatch(output.text, /^step +1\//m, 'nothing was committed from a fenced report');
      stream.cancel();
    } finally {
      client?.close();
      child.kill('SIGKILL');
      await exitOf(child, 10_000).catch(() => undefined);
    }
  });

  it('claims: the shorter half of a step goes in shrinking pieces to whoever asks, each record once (a claim sent again gets the same records); a step whose records were not all computed is not committed', async () => {
    const runDir = path.join(dir, 'claims');
    const child = spawn(process.execPath, [CLI, ...runArgs(runDir, 0, ['--workers', '2', '--join-timeout', '30', '--global-batch', '16', '--step-timeout', '3'])], { stdio: ['ignore', 'pipe', 'pipe'] });
    const output = collect(child);
    const clients: ControlClient[] = [];
    const beats: NodeJS.Timeout[] = [];
    try {
      await waitFor(() => /listening on/.test(output.text), 30_000, () => output.text);
      const token = new JoinToken(readFileSync(path.join(runDir, 'join-token'), 'utf8').trim());
      const forged = await Promise.all(
        ['fast', 'slow'].map(async (name) => {
          const client = new ControlClient(address(output.text), token);
          clients.push(client);
          const { workerId } = await client.join({ name, backend: 'cpu', freeMemoryBytes: 0, runId: '', heldStep: 0, generation: 0 }, 10_000);
          const instructions: Instruction[] = [];
          const stream = client.instructions(workerId, '127.0.0.1:9');
          stream.on('data', (i: Instruction) => instructions.push(i));
          stream.on('error', () => undefined);
          // alive to the coordinator's heartbeat checks, as a real worker's thread keeps it
          const beating = setInterval(() => void client.heartbeat({ workerId, generation: 0, step: 0 }).catch(() => undefined), 200);
          beats.push(beating);
          return { client, workerId, instructions, stream };
        }),
      );
      const work = async (w: (typeof forged)[number], step: number) => {
        await waitFor(() => w.instructions.some((i) => i.kind === 'work' && i.work.step === step), 30_000, () => JSON.stringify(w.instructions.map((i) => i.kind)));
        const i = w.instructions.find((x) => x.kind === 'work' && x.work.step === step)!;
        return i.kind === 'work' ? i.work : assert.fail('not work');
      };
      const [fast, slow] = forged as [(typeof forged)[number], (typeof forged)[number]];
      const [fastWork, slowWork] = await Promise.all([work(fast, 1), work(slow, 1)]);
      assert.ok(fastWork.claim && slowWork.claim, 'with 2 workers and --balance dynamic, records are left to claim');
      // the shares: [0, 4) and [4, 8) of 16; records 8-15 (the shorter half) are claimable
      assert.deepEqual([fastWork.firstSample, fastWork.records.length, slowWork.firstSample, slowWork.records.length], [0, 4, 4, 4]);
      const generation = fastWork.generation;
      const pieces: { firstSample: number; ids: number[] }[] = [];
      for (let sequence = 1; ; sequence++) {
        const reply = await fast.client.claim({ workerId: fast.workerId, generation, step: 1, sequence });
        if (reply.records.length === 0) break;
        pieces.push({ firstSample: reply.firstSample, ids: reply.records.map((r) => r.id) });
        if (sequence === 2) {
          // the same claim again (its reply lost on the way): the same records, nothing skipped
          const again = await fast.client.claim({ workerId: fast.workerId, generation, step: 1, sequence });
          assert.deepEqual([again.firstSample, again.records.map((r) => r.id)], [reply.firstSample, pieces.at(-1)!.ids]);
        }
      }
      assert.deepEqual(pieces.map((p) => [p.firstSample, p.ids.length]), [[8, 4], [12, 2], [14, 1], [15, 1]], 'ceil(remaining / 2) each, down to one record');
      const everyId = [...fastWork.records, ...slowWork.records].map((r) => r.id).concat(pieces.flatMap((p) => p.ids));
      assert.equal(new Set(everyId).size, 16, 'no record is handed out twice');
      assert.deepEqual((await slow.client.claim({ workerId: slow.workerId, generation, step: 1, sequence: 1 })).records, [], 'nothing is left for the slow one');
      const report = { ok: true, error: '', loss: 1, accuracy: 0, targets: 1, gradNorm: 0, learningRate: 0, computeSeconds: 0.1, reduceSeconds: 0, tokens: 1, paramDigest: '', forwardBackwardSeconds: 0.1, copySeconds: 0, applySeconds: 0, positions: 0, generation };
      await fast.client.report({ ...report, workerId: fast.workerId, step: 1, samples: 12 });
      await slow.client.report({ ...report, workerId: slow.workerId, step: 1, samples: 4 });
      await waitFor(() => /^step +1\//m.test(output.text), 30_000, () => output.text);
      // step 2: the reports cover 8 of 16 records (nobody claimed the rest): not committed
      await Promise.all([work(fast, 2), work(slow, 2)]);
      await fast.client.report({ ...report, workerId: fast.workerId, step: 2, samples: 4 });
      await slow.client.report({ ...report, workerId: slow.workerId, step: 2, samples: 4 });
      assert.equal(await exitOf(child, 30_000), 1);
      assert.match(output.text, /step 2: the workers computed 8 of its 16 records and left 8 unclaimed; nothing was applied/);
      assert.doesNotMatch(output.text, /^step +2\//m, 'step 2 was not committed');
      for (const w of forged) w.stream.cancel();
    } finally {
      for (const b of beats) clearInterval(b);
      for (const c of clients) c.close();
      child.kill('SIGKILL');
      await exitOf(child, 10_000).catch(() => undefined);
    }
  });

  it('every worker lost: the run exits 1 at once, naming the loss and how to continue', async () => {
    const runDir = path.join(dir, 'all-gone');
    const child = spawn(process.execPath, [CLI, ...runArgs(runDir, 1)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const output = collect(child);
    try {
      await waitFor(() => lastStep(output.text) >= 2, 60_000, () => output.text);
      process.kill(workerPid(output.text, 0), 'SIGKILL');
      // the heartbeat timeout (10 s) bounds how long a loss takes to notice; far below --rejoin-timeout
      assert.equal(await exitOf(child, 30_000), 1, output.text);
      assert.match(output.text, /coordinator: error: step \d+ failed: worker \d+ \(local-0\) is gone: .*\(0 worker\(s\) left, --min-workers 1\); continue the run with `coordinator start --run-dir /);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('below --min-workers the coordinator waits for a worker to join, and the run goes on with every record once', async () => {
    const runDir = path.join(dir, 'rejoined');
    const child = spawn(process.execPath, [CLI, ...runArgs(runDir, 2, ['--min-workers', '2', '--rejoin-timeout', '60'])], { stdio: ['ignore', 'pipe', 'pipe'] });
    const output = collect(child);
    let newcomer: ChildProcess | undefined;
    try {
      await waitFor(() => lastStep(output.text) >= 2, 60_000, () => output.text);
      process.kill(workerPid(output.text, 1), 'SIGKILL');
      await waitFor(() => /fewer than --min-workers 2: waiting up to 60 s for workers to join/.test(output.text), 30_000, () => output.text);
      const token = readFileSync(path.join(runDir, 'join-token'), 'utf8').trim();
      newcomer = spawn(process.execPath, [WORKER_CLI, 'start', '--coordinator', address(output.text), '--backend', 'cpu', '--name', 'newcomer'], { stdio: 'ignore', env: { ...process.env, PRETRAIN_TOKEN: token } });
      await waitFor(() => /1 worker\(s\) join; going on with 2/.test(output.text), 60_000, () => output.text);
      const joinedAt = lastStep(output.text);
      await waitFor(() => lastStep(output.text) >= joinedAt + 2, 60_000, () => output.text);
      child.kill('SIGTERM');
      assert.equal(await exitOf(child, 60_000), 0, output.text);
    } finally {
      child.kill('SIGKILL');
      newcomer?.kill('SIGKILL');
    }
    const stoppedAt = Number(/stopping at step (\d+) as asked/.exec(output.text)?.[1]);
    assert.match(output.text, new RegExp(`step +${stoppedAt}/1000 .*workers 2`));
    const audit = await runScript(CLI, ['audit', runDir, '--json']);
    const report = JSON.parse(audit.stdout) as { ok: boolean; epochs: { exactlyOnce: number; repeated: number }[] };
    assert.equal(report.ok, true, audit.stdout);
    assert.equal(report.epochs[0]!.exactlyOnce, stoppedAt * 4);
  });

  it('a worker that keeps failing waits longer each time; past --max-failures the run checkpoints and stops', async () => {
    const runDir = path.join(dir, 'flaky');
    // a backoff longer than a loaded machine needs to start a worker: it must still be running when the worker asks in
    const child = spawn(process.execPath, [CLI, ...runArgs(runDir, 1, ['--workers', '2', '--failure-backoff', '12', '--max-failures', '2'])], { stdio: ['ignore', 'pipe', 'pipe'] });
    const output = collect(child);
    let flaky: ChildProcess | undefined;
    const startFlaky = (): ChildProcess => {
      const token = readFileSync(path.join(runDir, 'join-token'), 'utf8').trim();
      return spawn(process.execPath, [WORKER_CLI, 'start', '--coordinator', address(output.text), '--backend', 'cpu', '--name', 'flaky'], { stdio: 'ignore', env: { ...process.env, PRETRAIN_TOKEN: token } });
    };
    const count = (pattern: RegExp) => (output.text.match(pattern) ?? []).length;
    const joins = /1 worker\(s\) join; going on with 2/g;
    const shrinks = /going on with 1 worker\(s\)/g;
    const stepsWithTwo = /^step +\d+\/1000 .*workers 2/gm;
    /** Starts the flaky worker, waits until it is in (`joinsAfter` joins so far) and trained a step, kills it. */
    const failOnce = async (joinsAfter: number): Promise<void> => {
      flaky = startFlaky();
      await waitFor(() => count(joins) >= joinsAfter, 60_000, () => output.text);
      const trained = count(stepsWithTwo);
      await waitFor(() => count(stepsWithTwo) > trained, 60_000, () => output.text);
      flaky.kill('SIGKILL');
      await exitOf(flaky, 10_000);
    };
    try {
      await waitFor(() => /listening on/.test(output.text), 30_000, () => output.text);
      // 1: the run starts with it (--workers 2)
      await failOnce(0);
      await waitFor(() => count(shrinks) >= 1, 30_000, () => output.text);
      // 2: the first failure is free: it comes in at the next step boundary
      await failOnce(1);
      await waitFor(() => count(shrinks) >= 2, 30_000, () => output.text);
      // 3: the second failure within 30 min: held back by the backoff, then taken in
      flaky = startFlaky();
      await waitFor(() => /\(flaky, cpu\) joined the running run: it comes in at a step boundary; it failed 2 times lately, so it waits ([1-9]|1[0-2]) s first/.test(output.text), 60_000, () => output.text);
      const held = output.text.length;
      await waitFor(() => count(joins) >= 2, 60_000, () => output.text);
      assert.ok(output.text.lastIndexOf('1 worker(s) join; going on with 2') > held, 'taken in after it was held');
      const trained = count(stepsWithTwo);
      await waitFor(() => count(stepsWithTwo) > trained, 60_000, () => output.text);
      flaky.kill('SIGKILL');
      // the third failure is one more than --max-failures 2
      assert.equal(await exitOf(child, 60_000), 1, output.text);
    } finally {
      child.kill('SIGKILL');
      flaky?.kill('SIGKILL');
    }
    assert.match(output.text, /coordinator: error: step \d+ failed: .*the last committed step \(\d+\) is checkpointed \(3 worker failures, more than --max-failures 2: look at the workers' logs/);
  });

  it('mutual TLS on the control plane: local workers present the run\'s certificate; a client without one cannot join', async () => {
    const pki: Pki = makePki(dir, 'control');
    const runDir = path.join(dir, 'tls');
    const tls = ['--tls-ca', pki.ca, '--tls-cert', pki.cert, '--tls-key', pki.key];
    const child = spawn(process.execPath, [CLI, ...runArgs(runDir, 1, ['--workers', '1', '--steps', '3', ...tls])], { stdio: ['ignore', 'pipe', 'pipe'] });
    const output = collect(child);
    try {
      await waitFor(() => /listening on/.test(output.text), 30_000, () => output.text);
      const token = new JoinToken(readFileSync(path.join(runDir, 'join-token'), 'utf8').trim());
      // the token alone does not do: the channel needs a certificate of the run's CA
      const plain = new ControlClient(address(output.text), token);
      const refused = await plain.join({ name: 'no-tls', backend: 'cpu', freeMemoryBytes: 0, runId: '', heldStep: 0, generation: 0 }, 3000).then(() => undefined, (e: Error) => e);
      plain.close();
      assert.ok(refused instanceof ControlError, String(refused));
      assert.equal(refused.code === grpc.status.UNAVAILABLE || refused.code === grpc.status.DEADLINE_EXCEEDED, true, String(refused));
      assert.equal(await exitOf(child, 120_000), 0, output.text);
      assert.match(output.text, /step 3\/3 .*workers 1/);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('a coordinator started again on its run directory continues the run; other settings are refused from the journal before any checkpoint', async () => {
    const runDir = path.join(dir, 'restarted');
    const first = spawn(process.execPath, [CLI, ...runArgs(runDir, 1)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const before = collect(first);
    let worker: number | undefined;
    try {
      await waitFor(() => lastStep(before.text) >= 2, 60_000, () => before.text);
      worker = workerPid(before.text, 0);
      first.kill('SIGKILL');
      await exitOf(first, 10_000);
    } finally {
      first.kill('SIGKILL');
      killQuietly(worker);
    }
    assert.ok(!existsSync(path.join(runDir, 'ckpt-00000001')), 'no checkpoint yet');
    const other = await runScript(CLI, [...runArgs(runDir, 1, ['--seed', '7'])], { timeout: 60_000 });
    assert.equal(other.code, 1, other.stdout + other.stderr);
    assert.match(other.stderr, /holds a run with other settings \(.*journal\.tfrecord\): --seed \(the run has 1, now 7\)/);
    const again = await runScript(CLI, [...runArgs(runDir, 1), '--steps', '4'], { timeout: 120_000 });
    assert.equal(again.code, 0, again.stdout + again.stderr);
    assert.match(again.stdout, /holds a run \(journal\.tfrecord\): continuing it/);
    assert.match(again.stdout, /step 4\/4/);
    const audit = await runScript(CLI, ['audit', runDir, '--json']);
    const report = JSON.parse(audit.stdout) as { ok: boolean; epochs: { exactlyOnce: number; repeated: number }[] };
    assert.equal(report.ok, true, audit.stdout);
    assert.equal(report.epochs[0]!.exactlyOnce, 4 * 4);
  });
});
