/**
 * The standard grpc.health.v1 service that Kubernetes probes: on the coordinator's control
 * port (SERVING once it listens) and on a worker's --health-port (readiness "" SERVING only
 * while it is in a run; "liveness" SERVING from the start). Real processes on 127.0.0.1,
 * asked the way the kubelet asks: plaintext, no token.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { freePort } from '../bench/common.js';
import { prepare } from '../src/data/prepare.js';
import { prepareOptions, writeSampleSlice } from './helpers.js';
import { exitOf, healthCheck, Processes, waitForAnswer } from './k8s-support.js';

const CLI = fileURLToPath(new URL('../coordinator/cli.js', import.meta.url));
const WORKER_CLI = fileURLToPath(new URL('../worker/cli.js', import.meta.url));

let dir: string;
let data: string;
let tokenFile: string;

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'k8s-health-'));
  data = path.join(dir, 'data');
  await prepare(prepareOptions(await writeSampleSlice(dir, 20), data, { task: 'mlm', maxLength: 32, recordsPerShard: 100 }));
  tokenFile = path.join(dir, 'token');
  await writeFile(tokenFile, 'health-test-token\n', { mode: 0o600 });
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('grpc.health.v1 for Kubernetes probes (real processes on 127.0.0.1)', () => {
  it('a worker is live at once but ready only once it has joined; the coordinator is ready once it listens; neither asks for the token', { timeout: 90_000 }, async () => {
    const processes = new Processes();
    try {
      const [controlPort, healthPort, dataPort] = [await freePort(), await freePort(), await freePort()];
      const coordinator = `127.0.0.1:${controlPort}`;
      const workerHealth = `127.0.0.1:${healthPort}`;
      const env = { ...process.env, PRETRAIN_TOKEN_FILE: tokenFile };
      // the worker first: its coordinator is not up yet, so it waits to join
      const worker = processes.start(process.execPath, [WORKER_CLI, 'start', '--log-format', 'text', '--coordinator', coordinator, '--backend', 'cpu', '--port', String(dataPort), '--health-port', String(healthPort), '--name', 'probed'], { env });
      const live = await waitForAnswer(() => healthCheck(workerHealth, 'liveness'), (a) => a.status !== undefined, 30_000, () => `the worker's health port\n${worker.output.text}`, [worker]);
      assert.equal(live.status, 'SERVING', 'liveness: the process answers');
      assert.deepEqual(await healthCheck(workerHealth, ''), { status: 'NOT_SERVING' }, 'not ready before it has joined a run');
      assert.deepEqual(await healthCheck(workerHealth, 'pretrain.unknown'), { code: grpc.status.NOT_FOUND });
      assert.deepEqual(await healthCheck(coordinator, ''), { code: grpc.status.UNAVAILABLE }, 'nothing listens on the control port yet');

      const run = processes.start(process.execPath, [CLI, 'start', '--log-format', 'text', '--run-dir', path.join(dir, 'run'), '--data', data, '--listen', coordinator, '--local-workers', '0', '--workers', '1',
        '--preset', 'L1-H32', '--steps', '1000', '--global-batch', '2', '--checkpoint-every', '1000', '--log-every', '1'], { env });
      const ready = await waitForAnswer(() => healthCheck(coordinator, ''), (a) => a.status === 'SERVING', 30_000, () => `the coordinator's readiness\n${run.output.text}`, [run, worker]);
      assert.deepEqual(ready, { status: 'SERVING' });
      assert.deepEqual(await healthCheck(coordinator, 'liveness'), { status: 'SERVING' });
      await waitForAnswer(() => healthCheck(workerHealth, ''), (a) => a.status === 'SERVING', 30_000, () => `the worker's readiness\n${worker.output.text}\n${run.output.text}`, [run, worker]);
      assert.match(worker.output.text, new RegExp(`joined run .*data plane 127\\.0\\.0\\.1:${dataPort}`), 'the data plane on its fixed --port');

      // the run ends (SIGTERM: checkpoint, then stop): the worker is told stop and leaves; its health port goes with it
      run.child.kill('SIGTERM');
      assert.equal(await exitOf(run.child, 60_000), 0, run.output.text);
      assert.equal(await exitOf(worker.child, 30_000), 0, worker.output.text);
      assert.deepEqual(await healthCheck(workerHealth, ''), { code: grpc.status.UNAVAILABLE });
    } finally {
      processes.killAll();
    }
  });

  it('SIGTERM ends a worker that waits to join (a container\'s first process ignores signals it does not handle)', { timeout: 30_000 }, async () => {
    const processes = new Processes();
    try {
      const healthPort = await freePort();
      const worker = processes.start(process.execPath, [WORKER_CLI, 'start', '--log-format', 'text', '--coordinator', `127.0.0.1:${await freePort()}`, '--backend', 'cpu', '--health-port', String(healthPort)], { env: { ...process.env, PRETRAIN_TOKEN: 'a-token-of-the-test-run' } });
      await waitForAnswer(() => healthCheck(`127.0.0.1:${healthPort}`, 'liveness'), (a) => a.status === 'SERVING', 20_000, () => worker.output.text, [worker]);
      worker.child.kill('SIGTERM');
      assert.equal(await exitOf(worker.child, 10_000), 143);
    } finally {
      processes.killAll();
    }
  });
});
