import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { canPinWorkers, cpusToPin, parseCpuList } from '../src/coordinator/cpu-pinning.js';
import { prepareRunData } from './helpers.js';

const CLI = fileURLToPath(new URL('../coordinator/cli.js', import.meta.url));

describe('pinning local workers to CPUs', () => {
  it('reads Linux CPU lists, and names a malformed one', () => {
    assert.deepEqual(parseCpuList('0'), [0]);
    assert.deepEqual(parseCpuList('0-3,6,8-9\n'), [0, 1, 2, 3, 6, 8, 9]);
    assert.throws(() => parseCpuList('0-x'), /not a CPU list: "0-x"/);
    assert.throws(() => parseCpuList('3-1'), /runs backwards/);
  });

  it('coordinator start --pin-workers runs each local worker on the CPU it was given', { skip: !canPinWorkers() && 'no taskset or /proc here', timeout: 120_000 }, async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'pinning-'));
    const { mlm } = await prepareRunData(dir);
    const cpus = cpusToPin();
    const child = spawn(process.execPath, [CLI, 'start', '--run-dir', path.join(dir, 'run'), '--local-workers', '1', '--pin-workers', '--backend', 'cpu', '--preset', 'L1-H32', '--data', mlm, '--global-batch', '4', '--steps', '100000', '--log-format', 'json', '--log-every', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', (b: Buffer) => (text += b.toString()));
    child.stderr.on('data', (b: Buffer) => (text += b.toString()));
    let workerPid: number | undefined;
    try {
      // a line of the worker's own, with its pid, once it trains
      const deadline = Date.now() + 90_000;
      while (workerPid === undefined) {
        assert.ok(Date.now() < deadline, `no worker line within 90 s:\n${text}`);
        assert.equal(child.exitCode, null, `the coordinator exited:\n${text}`);
        // complete lines only: the last one may be half written
        for (const line of text.split('\n').slice(0, -1)) {
          const entry = /^\{/.test(line) ? (JSON.parse(line) as { name?: string; pid?: number; msg?: string }) : undefined;
          if (entry?.name === 'worker' && typeof entry.pid === 'number' && entry.pid !== child.pid) workerPid = entry.pid;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.match(text, new RegExp(`local workers pinned to CPUs ${cpus[0]} \\(worker 0 first\\)`));
      const status = readFileSync(`/proc/${workerPid}/status`, 'utf8');
      assert.deepEqual(parseCpuList(/^Cpus_allowed_list:\s*(.+)$/m.exec(status)![1]!), [cpus[0]], 'the worker may run on its CPU only');
    } finally {
      child.kill('SIGKILL');
      // the worker runs in its own process group: stopped here rather than left to notice
      if (workerPid !== undefined) {
        try {
          process.kill(workerPid, 'SIGKILL');
        } catch {
          // gone already
        }
      }
      await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(undefined) : child.once('exit', r)));
      await rm(dir, { recursive: true, force: true });
    }
  });
});
