import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { CoordinatorMetrics, type MetricsEndpoint, metricsAnnouncement, parseMetricsAnnouncement, scrapeAddress, serveMetrics, targetGroups, WorkerMetrics } from '../src/metrics/metrics.js';

import { type Family, labelProblems, namingProblems, parseExposition } from './metrics-exposition.js';

const WORKER_CLI = fileURLToPath(new URL('../worker/cli.js', import.meta.url));

async function scrape(endpoint: MetricsEndpoint): Promise<Map<string, Family>> {
  const res = await fetch(`http://${endpoint.address}/metrics`, { signal: AbortSignal.timeout(10_000) });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  return parseExposition(await res.text());
}

function step(m: CoordinatorMetrics, n: number, epoch: number): void {
  m.stepCommitted({ seconds: 0.2, samples: 4, tokens: 100, loss: 7.5, learningRate: 0.01, gradNorm: 1.5, step: n, epoch, consumedInEpoch: 4 * (n % 3), epochSize: 12 });
}

describe('metrics (/metrics fetched over HTTP)', () => {
  it('the coordinator\'s series follow Prometheus naming, carry build_info and the process metrics, and keep their labels bounded', async () => {
    const metrics = new CoordinatorMetrics();
    metrics.generation(1, 2);
    metrics.restarts(1);
    // four epochs go by: only the current and the previous one keep a series
    for (let n = 1; n <= 10; n++) step(metrics, n, Math.floor(n / 3));
    metrics.stepAborted();
    metrics.generation(2, 1);
    metrics.generation(3, 2);
    metrics.checkpointSaved(10, 0.5, 123456);
    const endpoint = await serveMetrics(metrics.registry, '127.0.0.1', 0);
    try {
      const families = await scrape(endpoint);
      assert.deepEqual(namingProblems(families), []);
      assert.deepEqual(labelProblems(families), []);
      const info = families.get('pretrain_build_info')!.samples;
      assert.equal(info.length, 1);
      assert.equal(info[0]!.value, 1);
      assert.deepEqual(Object.keys(info[0]!.labels).sort(), ['backend', 'node', 'version']);
      assert.equal(info[0]!.labels.node, process.version);
      assert.equal(info[0]!.labels.backend, 'none');
      assert.match(info[0]!.labels.version!, /^\d+\.\d+\.\d+/);
      for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds']) assert.ok(families.has(name), `default process metric ${name}`);
      const value = (name: string, labels: Record<string, string> = {}) =>
        [...families.values()].flatMap((f) => f.samples).find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
      assert.equal(value('pretrain_tokens_total'), 1000);
      assert.equal(value('pretrain_samples_total'), 40);
      assert.equal(value('pretrain_step_duration_seconds_count'), 10);
      assert.equal(value('pretrain_world_size'), 2);
      assert.equal(value('pretrain_generation'), 3);
      assert.equal(value('pretrain_membership_changes_total', { change: 'shrink' }), 1);
      assert.equal(value('pretrain_membership_changes_total', { change: 'grow' }), 1);
      assert.equal(value('pretrain_aborted_steps_total'), 1);
      assert.equal(value('pretrain_restarts_total'), 1);
      assert.equal(value('pretrain_checkpoint_size_bytes'), 123456);
      assert.ok(Math.abs(value('pretrain_checkpoint_last_timestamp_seconds')! - Date.now() / 1000) < 60, 'unix seconds');
      assert.equal(value('pretrain_learning_rate'), 0.01);
      const epochs = families.get('pretrain_epoch_records_consumed')!.samples.map((s) => s.labels.epoch).sort();
      assert.deepEqual(epochs, ['2', '3'], 'the current and the previous epoch only');
      assert.equal(value('pretrain_epoch_records_consumed', { epoch: '2' }), 12, 'a completed epoch shows all its records');
      for (const name of ['pretrain_step_duration_seconds', 'pretrain_checkpoint_duration_seconds']) assert.equal(families.get(name)?.type, 'histogram');
      const other = await fetch(`http://${endpoint.address}/`, { signal: AbortSignal.timeout(10_000) });
      assert.equal(other.status, 404);
    } finally {
      await endpoint.close();
    }
  });

  it('a worker\'s series carry rank and host; a new rank drops the old rank\'s series', async () => {
    const metrics = new WorkerMetrics('auto', 'node-a');
    metrics.backend('cpu');
    metrics.assigned(0, 2, 1);
    const work = { computeSeconds: 0.1, copySeconds: 0.01, reduceSeconds: 0.05, bytesSent: 1000, bytesReceived: 1000, samples: 2, tokens: 50 };
    metrics.stepReduced(work);
    metrics.stepReduced(work);
    metrics.assigned(1, 3, 2);
    metrics.stepReduced(work);
    metrics.stepFailed();
    const endpoint = await serveMetrics(metrics.registry, '127.0.0.1', 0);
    try {
      const families = await scrape(endpoint);
      assert.deepEqual(namingProblems(families), []);
      assert.deepEqual(labelProblems(families), []);
      assert.equal(families.get('pretrain_build_info')!.samples[0]!.labels.backend, 'cpu');
      for (const name of ['pretrain_worker_compute_duration_seconds', 'pretrain_device_to_host_copy_duration_seconds', 'pretrain_allreduce_duration_seconds', 'pretrain_allreduce_bytes_total', 'pretrain_worker_samples_total', 'pretrain_worker_tokens_total', 'pretrain_worker_failed_steps_total', 'pretrain_worker_world_size']) {
        const family = families.get(name);
        assert.ok(family && family.samples.length > 0, name);
        for (const s of family.samples) {
          assert.equal(s.labels.rank, '1', `${s.name}: only the current rank's series`);
          assert.equal(s.labels.host, 'node-a');
        }
      }
      const tokens = families.get('pretrain_worker_tokens_total')!.samples;
      assert.deepEqual(tokens.map((s) => s.value), [50]);
      assert.deepEqual(families.get('pretrain_allreduce_bytes_total')!.samples.map((s) => s.labels.direction).sort(), ['received', 'sent']);
    } finally {
      await endpoint.close();
    }
  });

  it('worker start --metrics-port 0 serves on a free port and announces it on stderr; a bad port is a usage error', async () => {
    // a coordinator that is not there: the worker keeps trying to join while its metrics are served
    const child = spawn(process.execPath, [WORKER_CLI, 'start', '--log-format', 'text', '--coordinator', '127.0.0.1:1', '--backend', 'cpu', '--metrics-port', '0'], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, PRETRAIN_TOKEN: 'a-token-for-the-test' } });
    let stderr = '';
    try {
      const address = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no metrics announcement within 30 s; stderr:\n${stderr}`)), 30_000);
        child.stderr!.on('data', (d: Buffer) => {
          stderr += d.toString();
          const found = stderr.split('\n').map(parseMetricsAnnouncement).find((a) => a !== undefined);
          if (found) {
            clearTimeout(timer);
            resolve(found);
          }
        });
        child.once('exit', (code) => reject(new Error(`the worker exited (${code}) before announcing its metrics:\n${stderr}`)));
      });
      assert.match(address, /^127\.0\.0\.1:\d+$/);
      const families = parseExposition(await (await fetch(`http://${address}/metrics`, { signal: AbortSignal.timeout(10_000) })).text());
      assert.deepEqual(namingProblems(families), []);
      assert.ok(families.has('pretrain_build_info'));
      assert.ok(families.has('process_cpu_seconds_total'));
    } finally {
      child.kill('SIGKILL');
    }
    const bad = spawn(process.execPath, [WORKER_CLI, 'start', '--log-format', 'text', '--coordinator', '127.0.0.1:1', '--metrics-port', '70000'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let badErr = '';
    bad.stderr!.on('data', (d: Buffer) => (badErr += d.toString()));
    const code = await new Promise<number | null>((resolve) => bad.once('exit', resolve));
    assert.equal(code, 2, badErr);
    assert.match(badErr, /--metrics-port.*expected a port 0-65535/);
  });

  it('announcements, scrape addresses and file_sd target groups', () => {
    assert.equal(parseMetricsAnnouncement(metricsAnnouncement('worker', '127.0.0.1:9400')), '127.0.0.1:9400');
    assert.equal(parseMetricsAnnouncement('  [worker 0] worker: metrics on http://127.0.0.1:1/metrics'), undefined, 'the line itself, not a prefixed copy');
    assert.equal(scrapeAddress('127.0.0.1:9400'), '127.0.0.1:9400');
    assert.doesNotMatch(scrapeAddress('0.0.0.0:9400'), /^0\.0\.0\.0/);
    assert.deepEqual(targetGroups('127.0.0.1:1', new Map([[1, '127.0.0.1:3'], [0, '127.0.0.1:2']])), [
      { targets: ['127.0.0.1:1'], labels: { role: 'coordinator' } },
      { targets: ['127.0.0.1:2'], labels: { role: 'worker', worker: 'local-0' } },
      { targets: ['127.0.0.1:3'], labels: { role: 'worker', worker: 'local-1' } },
    ]);
  });
});
