import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { loadLatestCheckpoint } from '../src/checkpoint/run-checkpoint.js';
import { JoinToken } from '../src/comm/auth.js';
import { replicaDivergence } from '../src/coordinator/coordinator.js';
import { ControlClient } from '../src/control/client.js';
import { selectBackend } from '../src/backend/index.js';
import { readManifest } from '../src/data/dataset.js';
import { buildTransformer, disposeTransformer } from '../src/model/build.js';
import { presetConfig } from '../src/model/config.js';
import { trainableWeights } from '../src/model/weights.js';
import { freePort } from '../bench/common.js';
import { Journal, JOURNAL_FILE } from '../src/run/journal.js';
import { prepareRunData, runScript } from './helpers.js';
import { collect, exitOf, waitFor, workerPid } from './fixtures/processes.js';

const CLI = fileURLToPath(new URL('../coordinator/cli.js', import.meta.url));
const WORKER_CLI = fileURLToPath(new URL('../worker/cli.js', import.meta.url));

let dir: string;
const data = { mlm: '', seq2seq: '' };

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'coordinator-'));
  Object.assign(data, await prepareRunData(dir));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A small run on cpu: L1-H32 (dropout 0.1), AdaFactor, recompute, 3 steps of 6 sequences. */
function runArgs(runDir: string, workers: number, extra: string[] = []): string[] {
  // the human lines, which these tests read (the JSON log: tests/logs.test.ts)
  return ['start', '--log-format', 'text', '--run-dir', runDir, '--local-workers', String(workers), '--backend', 'cpu', '--preset', 'L1-H32', '--steps', '3', '--global-batch', '6', '--checkpoint-every', '3', '--log-every', '1', ...extra];
}

async function finalParams(runDir: string): Promise<Map<string, Float32Array>> {
  const latest = await loadLatestCheckpoint(runDir);
  assert.ok(latest.checkpoint, `no checkpoint in ${runDir}`);
  return new Map(latest.checkpoint.params.map((p) => [p.name, p.data]));
}

function maxDifference(a: Map<string, Float32Array>, b: Map<string, Float32Array>): number {
  assert.deepEqual([...a.keys()], [...b.keys()]);
  let worst = 0;
  for (const [name, values] of a) values.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - b.get(name)![i]!))));
  return worst;
}

describe('replica digests', () => {
  it('are compared across the members: equal passes, a difference names who holds what, a missing one too', () => {
    const members = [{ id: 1, name: 'a' }, { id: 2, name: 'b' }];
    assert.equal(replicaDivergence(members, new Map([[1, { paramDigest: 'ab'.repeat(32) }], [2, { paramDigest: 'ab'.repeat(32) }]])), undefined);
    assert.equal(replicaDivergence(members, new Map([[1, { paramDigest: 'ab'.repeat(32) }], [2, { paramDigest: 'cd'.repeat(32) }]])), 'worker 1 (a) abababababab, worker 2 (b) cdcdcdcdcdcd');
    assert.equal(replicaDivergence(members, new Map([[1, { paramDigest: 'ab'.repeat(32) }], [2, { paramDigest: '' }]])), 'worker 1 (a) abababababab, worker 2 (b) sent none');
  });
});

describe('coordinator and workers (real processes on 127.0.0.1)', () => {
  for (const [task, application] of [['mlm', 'encoder'], ['seq2seq', 'unilm']] as const) {
    it(`2 workers end with the parameters of 1 worker on the same global batch, dropout and masking on (${task})`, async () => {
      const runs = [];
      for (const workers of [1, 2]) {
        const runDir = path.join(dir, `${task}-${workers}`);
        // Adam, not the default AdaFactor: AdaFactor's epsilon1 (1e-30) turns the rounding of a
        // gradient element that is ~0 into a whole step of either sign, so its parameters differ
        // by the summation order of the all-reduce; Adam's update is continuous in the gradient
        const optimizer = '{"type":"adam","learningRate":0.01}';
        const r = await runScript(CLI, runArgs(runDir, workers, ['--data', data[task], '--application', application, '--optimizer', optimizer, '--checksum-every', '1']), { timeout: 120_000 });
        assert.equal(r.code, 0, r.stderr + r.stdout);
        assert.match(r.stdout, /replicas identical in 2 check\(s\)/, 'the states after steps 1 and 2 compared');
        assert.match(r.stdout, new RegExp(`step 3/3 .*workers ${workers}`));
        runs.push(await finalParams(runDir));
      }
      const moved = maxDifference(runs[0]!, await initialParamsOf(application, task));
      assert.ok(moved > 1e-4, `training changed the weights (${moved})`);
      const difference = maxDifference(runs[0]!, runs[1]!);
      assert.ok(difference < 1e-5, `1 vs 2 workers: max parameter difference ${difference}`);
    });
  }

  it('the optimizer update sharded across 2 workers (--shard-optimizer) ends where the unsharded one does; the replicas stay identical', async () => {
    // matrices of 32 factored (the default only factors from 128), so both kinds of AdaFactor
    // state are sharded; even shares: the same gradient sums in both runs
    const optimizer = '{"type":"adafactor","learningRate":0.01,"minDimSizeToFactor":16}';
    const runs = [];
    for (const shard of ['--shard-optimizer', '--no-shard-optimizer']) {
      const runDir = path.join(dir, `shard-${shard}`);
      const extra = ['--data', data.mlm, '--optimizer', optimizer, '--balance', 'even', '--checksum-every', '1', ...(shard === '--shard-optimizer' ? [shard] : [])];
      const r = await runScript(CLI, runArgs(runDir, 2, extra), { timeout: 120_000 });
      assert.equal(r.code, 0, r.stderr + r.stdout);
      assert.match(r.stdout, /replicas identical in 2 check\(s\)/);
      assert.equal(/optimizer update sharded/.test(r.stdout), shard === '--shard-optimizer', r.stdout);
      runs.push(await finalParams(runDir));
    }
    const moved = maxDifference(runs[1]!, await initialParamsOf('encoder', 'mlm'));
    assert.ok(moved > 1e-3, `training changed the weights (${moved})`);
    // except the attention's key biases: softmax does not change when a bias adds the same to
    // every key's score, so their gradient is 0 but for rounding, and AdaFactor's unfactored
    // update steps by the sign of that rounding (g / sqrt(g^2 + eps1)), a whole step either way
    const [sharded, unsharded] = runs.map((r) => new Map([...r].filter(([name]) => !/key\/bias/.test(name))));
    assert.ok(sharded!.size < runs[0]!.size);
    const difference = maxDifference(sharded!, unsharded!);
    assert.ok(difference < 1e-5, `sharded vs unsharded: max parameter difference ${difference}`);
  });

  it('a worker killed mid-run: the others run its step again; a new worker joins at a step boundary; the run ends with the parameters of a run that lost nobody, every record once', async () => {
    const args = ['--data', data.mlm, '--global-batch', '6', '--log-every', '1', '--optimizer', '{"type":"adam","learningRate":0.01}'];
    const runDir = path.join(dir, 'shrunk');
    // long enough for any machine's pace; ended by SIGTERM once the newcomer has trained along
    const child = spawn(process.execPath, [CLI, ...runArgs(runDir, 3, [...args, '--steps', '1000', '--min-workers', '2'])], { stdio: ['ignore', 'pipe', 'pipe'] });
    const output = collect(child);
    let newcomer: ChildProcess | undefined;
    try {
      await waitFor(() => /step +3\/1000/.test(output.text), 60_000, () => output.text);
      process.kill(workerPid(output.text, 2), 'SIGKILL');
      await waitFor(() => /going on with 2 worker/.test(output.text), 60_000, () => output.text);
      const address = /listening on (\S+)/.exec(output.text)![1]!;
      const token = readFileSync(path.join(runDir, 'join-token'), 'utf8').trim();
      newcomer = spawn(process.execPath, [WORKER_CLI, 'start', '--coordinator', address, '--backend', 'cpu', '--name', 'newcomer'], { stdio: 'ignore', env: { ...process.env, PRETRAIN_TOKEN: token } });
      await waitFor(() => /1 worker\(s\) join; going on with 3/.test(output.text), 60_000, () => output.text);
      const joinedAt = (output.text.match(/^step /gm) ?? []).length;
      await waitFor(() => (output.text.match(/^step /gm) ?? []).length >= joinedAt + 2, 60_000, () => output.text);
      child.kill('SIGTERM');
      assert.equal(await exitOf(child, 60_000), 0, output.text);
      assert.equal(await exitOf(newcomer, 30_000), 0, 'the newcomer stops when the run does');
    } finally {
      child.kill('SIGKILL');
      newcomer?.kill('SIGKILL');
    }
    assert.match(output.text, /step \d+ aborted: worker \d+ \(local-2\) is gone: .*going on with 2 worker\(s\) \(generation 2\)/);
    assert.match(output.text, /step \d+: 1 worker\(s\) join; going on with 3 \(generation 3\)/);
    const stoppedAt = Number(/stopping at step (\d+) as asked/.exec(output.text)?.[1]);
    assert.match(output.text, new RegExp(`step +${stoppedAt}/1000 .*workers 3`));
    const clean = await runScript(CLI, runArgs(path.join(dir, 'clean'), 2, [...args, '--steps', String(stoppedAt)]), { timeout: 120_000 });
    assert.equal(clean.code, 0, clean.stderr + clean.stdout);
    const difference = maxDifference(await finalParams(path.join(dir, 'clean')), await finalParams(runDir));
    assert.ok(difference < 1e-5, `shrunk and grown vs clean run: max parameter difference ${difference}`);
    const audit = await runScript(CLI, ['audit', runDir, '--json']);
    const report = JSON.parse(audit.stdout) as { ok: boolean; epochs: { exactlyOnce: number; repeated: number }[] };
    assert.equal(report.ok, true, audit.stdout);
    assert.equal(report.epochs[0]!.exactlyOnce, stoppedAt * 6);
  });

  it('below --min-workers, with none joining within --rejoin-timeout, the run stops with a clear error and a checkpoint of the last committed step; --resume finishes it and the audit finds every record once', async () => {
    const runDir = path.join(dir, 'killed');
    const child = spawn(process.execPath, [CLI, ...runArgs(runDir, 2, ['--data', data.mlm, '--steps', '40', '--checkpoint-every', '100', '--global-batch', '4', '--min-workers', '2', '--rejoin-timeout', '2'])], { stdio: ['ignore', 'pipe', 'pipe'] });
    const output = collect(child);
    try {
      await waitFor(() => /step +3\/40/.test(output.text), 60_000, () => output.text);
      process.kill(workerPid(output.text, 1), 'SIGKILL');
      const code = await exitOf(child, 60_000);
      assert.equal(code, 1, output.text);
      // the step fails through whichever comes first: the lost worker's stream, or the survivor's collective naming it
      assert.match(output.text, /coordinator: error: step \d+ failed: worker \d+ \(local-[01]\) .*the last committed step \(\d+\) is checkpointed \(1 worker\(s\) left, --min-workers 2, and too few joined within 2 s\); continue the run with `coordinator start --run-dir/);
      assert.match(output.text, /fewer than --min-workers 2: waiting up to 2 s for workers to join/);
    } finally {
      child.kill('SIGKILL');
    }
    const resumed = await runScript(CLI, ['start', '--resume', runDir, '--local-workers', '2', '--backend', 'cpu', '--preset', 'L1-H32', '--data', data.mlm, '--steps', '12', '--global-batch', '4', '--checkpoint-every', '100'], { timeout: 120_000 });
    assert.equal(resumed.code, 0, resumed.stderr + resumed.stdout);
    assert.match(resumed.stdout, /step 12\/12/);
    const audit = await runScript(CLI, ['audit', runDir, '--json']);
    assert.equal(audit.code, 0, audit.stdout + audit.stderr);
    const report = JSON.parse(audit.stdout) as { ok: boolean; commits: number; epochs: { exactlyOnce: number; repeated: number }[] };
    assert.equal(report.ok, true);
    assert.equal(report.epochs[0]!.exactlyOnce, 12 * 4);
    assert.equal(report.epochs[0]!.repeated, 0);
  });

  it('SIGTERM (or Ctrl-C) finishes the step, checkpoints and exits 0; --resume completes the run', async () => {
    const runDir = path.join(dir, 'terminated');
    const child = spawn(process.execPath, [CLI, ...runArgs(runDir, 2, ['--data', data.mlm, '--steps', '40', '--checkpoint-every', '100', '--global-batch', '4'])], { stdio: ['ignore', 'pipe', 'pipe'] });
    const output = collect(child);
    try {
      await waitFor(() => /step +2\/40/.test(output.text), 60_000, () => output.text);
      child.kill('SIGINT');
      assert.equal(await exitOf(child, 60_000), 0, output.text);
    } finally {
      child.kill('SIGKILL');
    }
    const stoppedAt = Number(/stopping at step (\d+) as asked/.exec(output.text)?.[1]);
    assert.ok(stoppedAt >= 2 && stoppedAt < 40, output.text);
    assert.match(output.text, new RegExp(`checkpoint: step ${stoppedAt} ->`));
    const resumed = await runScript(CLI, ['start', '--resume', runDir, '--local-workers', '2', '--backend', 'cpu', '--preset', 'L1-H32', '--data', data.mlm, '--steps', String(stoppedAt + 2), '--global-batch', '4'], { timeout: 120_000 });
    assert.equal(resumed.code, 0, resumed.stderr + resumed.stdout);
    assert.match(resumed.stdout, new RegExp(`done: steps ${stoppedAt + 1}-${stoppedAt + 2} `));
  });

  it('a resume with other settings, or with no steps left, is refused naming what differs', async () => {
    const runDir = path.join(dir, 'settings');
    const first = await runScript(CLI, runArgs(runDir, 1, ['--data', data.mlm]), { timeout: 120_000 });
    assert.equal(first.code, 0, first.stderr + first.stdout);
    const resume = (extra: string[]) => runScript(CLI, ['start', '--resume', runDir, '--local-workers', '1', '--backend', 'cpu', '--data', data.mlm, '--global-batch', '6', '--preset', 'L1-H32', ...extra], { timeout: 60_000 });
    const other = await resume(['--steps', '5', '--seed', '7', '--global-batch', '8']);
    assert.equal(other.code, 1, other.stdout);
    assert.match(other.stderr, /holds a run with other settings \(.*journal\.tfrecord\): --seed \(the run has 1, now 7\); --global-batch \(the run has 6, now 8\)\. Resume with the run's settings/);
    const done = await resume(['--steps', '3']);
    assert.equal(done.code, 1, done.stdout);
    assert.match(done.stderr, /has done 3 steps already; ask for more with --steps \(now 3\)/);
  });

  it('a worker beyond --workers is sent away and the run goes on; SIGTERM while waiting for workers exits at once', async () => {
    const runDir = path.join(dir, 'extra');
    // long enough that the latecomer always finds it running; ended by SIGTERM afterwards
    const child = spawn(process.execPath, [CLI, ...runArgs(runDir, 1, ['--data', data.mlm, '--steps', '1000'])], { stdio: ['ignore', 'pipe', 'pipe'] });
    const output = collect(child);
    try {
      await waitFor(() => /step +2\/1000/.test(output.text), 60_000, () => output.text);
      const address = /listening on (\S+)/.exec(output.text)![1]!;
      const token = readFileSync(path.join(runDir, 'join-token'), 'utf8').trim();
      const extra = await runScript(WORKER_CLI, ['start', '--coordinator', address, '--backend', 'cpu', '--name', 'latecomer'], { timeout: 60_000, env: { PRETRAIN_TOKEN: token } });
      assert.equal(extra.code, 0, extra.stderr);
      assert.match(extra.stderr, /stopped: the run already has its 1 worker\(s\)/);
      const before = (output.text.match(/^step /gm) ?? []).length;
      await waitFor(() => (output.text.match(/^step /gm) ?? []).length > before + 1, 60_000, () => output.text);
      child.kill('SIGTERM');
      assert.equal(await exitOf(child, 60_000), 0, output.text);
      assert.match(output.text, /latecomer\) joined, but the run has its 1 worker\(s\); it is sent away/);
      assert.match(output.text, /stopping at step \d+ as asked/);
    } finally {
      child.kill('SIGKILL');
    }
    const waiting = spawn(process.execPath, [CLI, ...runArgs(path.join(dir, 'waiting'), 0, ['--data', data.mlm, '--workers', '1'])], { stdio: ['ignore', 'pipe', 'pipe'] });
    const waitingOutput = collect(waiting);
    try {
      await waitFor(() => /listening on/.test(waitingOutput.text), 30_000, () => waitingOutput.text);
      waiting.kill('SIGTERM');
      // bounded well under the 120 s join timeout; the message says which path ended it
      assert.equal(await exitOf(waiting, 10_000), 1);
      assert.match(waitingOutput.text, /stopped as asked before the run started/);
    } finally {
      waiting.kill('SIGKILL');
    }
  });

  for (const lostCommit of [false, true]) {
  it(lostCommit
    ? 'a coordinator killed between journaling a commit and sending it: restarted, it resumes from the live workers, and that commit is void and runs again'
    : 'a coordinator killed with SIGKILL and restarted resumes from the live workers with no committed step lost', async () => {
    const port = await freePort();
    const runDir = path.join(dir, lostCommit ? 'restarted-lost-commit' : 'restarted');
    const args = ['--data', data.mlm, '--global-batch', '4', '--checkpoint-every', '1000', '--steps', '1000', '--listen', `127.0.0.1:${port}`, '--optimizer', '{"type":"adam","learningRate":0.01}'];
    const first = spawn(process.execPath, [CLI, ...runArgs(runDir, 2, args)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const before = collect(first);
    let workers: number[] = [];
    let second: ChildProcess | undefined;
    try {
      await waitFor(() => /step +5\/1000/.test(before.text), 60_000, () => before.text);
      workers = [workerPid(before.text, 0), workerPid(before.text, 1)];
      first.kill('SIGKILL');
      await exitOf(first, 10_000);
      let committed = Math.max(...[...before.text.matchAll(/^step +(\d+)\//gm)].map((m) => Number(m[1])));
      if (lostCommit) {
        // the journal's next commit, as if the coordinator died right after its fsync, before any
        // worker heard of it: the workers hold the step before it
        const { journal, replay } = await Journal.open(path.join(runDir, JOURNAL_FILE));
        const last = replay.entries.filter((e) => e.type === 'commit').at(-1)!;
        committed = last.step;
        const end = last.positions.at(-1)![1];
        await journal.append({ type: 'commit', step: last.step + 1, epoch: last.epoch, positions: [[end, end + 4]] });
        await journal.close();
      }
      second = spawn(process.execPath, [CLI, 'start', '--log-format', 'text', '--resume', runDir, '--local-workers', '0', '--workers', '2', '--backend', 'cpu', '--preset', 'L1-H32', '--log-every', '1', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      const after = collect(second);
      await waitFor(() => /resuming from the live workers, which hold step (\d+)/.test(after.text), 60_000, () => after.text);
      const held = Number(/which hold step (\d+)/.exec(after.text)![1]);
      // the commit of the step last shown may still have been on its way to the workers when
      // the SIGKILL landed: that one step is void and runs again, and the log says so
      if (held < committed || lostCommit) assert.match(after.text, new RegExp(`the journal's commits? of steps? ${held + 1}(-\\d+)? never reached them .* so (it is|they are) void and runs? again`));
      assert.ok(held >= committed - 1, `the workers hold step ${held}, the old coordinator had shown ${committed}`);
      await waitFor(() => new RegExp(`step +${held + 2}/1000`).test(after.text), 60_000, () => after.text);
      second.kill('SIGTERM');
      assert.equal(await exitOf(second, 60_000), 0, after.text);
      const stoppedAt = Number(/stopping at step (\d+) as asked/.exec(after.text)?.[1]);
      assert.doesNotMatch(after.text, /steps \d+-\d+ run again/);
      const audit = await runScript(CLI, ['audit', runDir, '--json']);
      const report = JSON.parse(audit.stdout) as { ok: boolean; epochs: { exactlyOnce: number }[] };
      assert.equal(report.ok, true, audit.stdout);
      assert.equal(report.epochs[0]!.exactlyOnce, stoppedAt * 4);
      const clean = await runScript(CLI, runArgs(path.join(dir, lostCommit ? 'never-restarted-lost-commit' : 'never-restarted'), 2, [...args.filter((a) => !a.startsWith('127.0.0.1') && a !== '--listen'), '--steps', String(stoppedAt)]), { timeout: 120_000 });
      assert.equal(clean.code, 0, clean.stderr + clean.stdout);
      const difference = maxDifference(await finalParams(path.join(dir, lostCommit ? 'never-restarted-lost-commit' : 'never-restarted')), await finalParams(runDir));
      assert.ok(difference < 1e-5, `restarted vs never restarted: max parameter difference ${difference}`);
    } finally {
      first.kill('SIGKILL');
      second?.kill('SIGKILL');
      for (const pid of workers) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // exited already, as it should once the run stopped
        }
      }
    }
  });
  }

  it('takes the run from a run file, the command line winning; a bad file is named with its key', async () => {
    const file = path.join(dir, 'run.yaml');
    writeFileSync(file, `data: ${data.mlm}\npreset: L1-H32\nsteps: 2\nglobalBatch: 4\nlocalWorkers: 1\nbackend: cpu\nlogEvery: 1\ncheckpointEvery: 10\noptimizer: {type: adam, learningRate: 0.01}\nrunDir: ${path.join(dir, 'from-file')}\n`);
    const r = await runScript(CLI, ['start', '--config', file, '--steps', '3'], { timeout: 120_000 });
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /step 3\/3 .*workers 1/);
    assert.ok(existsSync(path.join(dir, 'from-file', 'ckpt-00000003')), 'the run directory of the file');
    writeFileSync(file, 'globalBatch: -4\nbatchSize: 8\n');
    const bad = await runScript(CLI, ['start', '--config', file]);
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /^coordinator: error: invalid run file .*run\.yaml: /);
    assert.match(bad.stderr, /globalBatch: Too small/);
    assert.match(bad.stderr, /unknown key\(s\) batchSize \(keys are the options of `coordinator start` in camelCase\)/);
  });

  it('refuses a worker without the run\'s token', async () => {
    const runDir = path.join(dir, 'token');
    const child = spawn(process.execPath, [CLI, ...runArgs(runDir, 0, ['--data', data.mlm, '--workers', '1', '--join-timeout', '20'])], { stdio: ['ignore', 'pipe', 'pipe'] });
    const output = collect(child);
    try {
      await waitFor(() => /listening on (\S+)/.test(output.text), 30_000, () => output.text);
      const address = /listening on (\S+)/.exec(output.text)![1]!;
      const intruder = new ControlClient(address, new JoinToken('not-the-token-of-this-run'));
      const refused = await intruder.join({ name: 'intruder', backend: 'cpu', freeMemoryBytes: 0, runId: '', heldStep: 0, generation: 0 }).then(() => undefined, (e: grpc.ServiceError) => e);
      intruder.close();
      assert.equal(refused?.code, grpc.status.UNAUTHENTICATED, String(refused));
      assert.match(String(refused), /refused this worker's join token/);
      assert.ok(existsSync(path.join(runDir, 'join-token')), 'the generated token is kept for workers started elsewhere');
    } finally {
      child.kill('SIGKILL');
      await exitOf(child, 10_000);
    }
  });
});

/** The weights a run starts from: every worker builds the model from the run's seed (1 by default). */
async function initialParamsOf(application: 'encoder' | 'unilm', task: 'mlm' | 'seq2seq'): Promise<Map<string, Float32Array>> {
  await selectBackend('cpu');
  const { manifest } = await readManifest(data[task]);
  const model = buildTransformer(presetConfig('L1-H32', manifest.vocab.size, { max_position_embeddings: 512 }), { application, withMlm: true, seed: 1 });
  const params = new Map(trainableWeights(model).map((w) => [w.name, new Float32Array(w.variable.dataSync() as Float32Array)]));
  disposeTransformer(model);
  return params;
}
