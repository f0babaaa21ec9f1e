/**
 * A real Prometheus scrapes a real run: the coordinator and its 2 local workers on 127.0.0.1,
 * found through <run-dir>/metrics-targets.json (file_sd), scraped every second. Prometheus
 * is Debian's (`apt-get install prometheus`, which .ci/run does), or the binary in
 * $PROMETHEUS_BIN; without one the test fails and says so.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { prepare } from '../src/data/prepare.js';
import { METRICS_TARGETS_FILE, type TargetGroup } from '../src/metrics/metrics.js';
import { freePort } from '../bench/common.js';
import { prepareOptions, writeSampleSlice } from './helpers.js';
import { dashboardPanels, dashboardQueries, labelProblems, metricNames, namingProblems, parseExposition, promQL, readDashboard } from './metrics-exposition.js';
import { collect, exitOf, waitFor, workerPid } from './fixtures/processes.js';

const CLI = fileURLToPath(new URL('../coordinator/cli.js', import.meta.url));

/** $PROMETHEUS_BIN, else `prometheus` on the PATH (Debian: /usr/bin/prometheus). */
function findPrometheus(): string | undefined {
  const candidates = [process.env.PROMETHEUS_BIN, ...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean).map((d) => path.join(d, 'prometheus')), '/usr/bin/prometheus'];
  for (const file of candidates) {
    if (!file) continue;
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not there
    }
  }
  return undefined;
}

let dir: string;
let data: string;

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'metrics-prometheus-'));
  const corpus = await writeSampleSlice(dir, 30);
  data = path.join(dir, 'data');
  await prepare(prepareOptions(corpus, data, { task: 'mlm', maxLength: 32, recordsPerShard: 100 }));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

describe('metrics scraped by a real Prometheus', () => {
  it('every target is up; tokens rise; the step histogram fills; world size goes 2 -> 1 when a worker is SIGKILLed and the run goes on', { timeout: 240_000 }, async () => {
    const prometheus = findPrometheus();
    assert.ok(prometheus, 'prometheus is not installed: `apt-get install -y prometheus` (Debian; .ci/run does it), or set PROMETHEUS_BIN to its binary. This test needs a real Prometheus and does not pass without one');
    const runDir = path.join(dir, 'run');
    const children: ChildProcess[] = [];
    const workerPids: number[] = [];
    try {
      // long enough for any machine's pace; ended by SIGTERM once everything was seen
      const coordinator = spawn(
        process.execPath,
        [CLI, 'start', '--log-format', 'text', '--run-dir', runDir, '--data', data, '--local-workers', '2', '--min-workers', '1', '--backend', 'cpu', '--preset', 'L1-H32', '--steps', '100000', '--global-batch', '4', '--checkpoint-every', '10', '--log-every', '1', '--metrics-port', '0'],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      children.push(coordinator);
      const output = collect(coordinator);
      const targetsFile = path.join(runDir, METRICS_TARGETS_FILE);
      const groups = (): TargetGroup[] => (existsSync(targetsFile) ? (JSON.parse(readFileSync(targetsFile, 'utf8')) as TargetGroup[]) : []);
      await waitFor(() => groups().length === 3, 60_000, () => `${targetsFile}: ${existsSync(targetsFile) ? readFileSync(targetsFile, 'utf8') : 'absent'}\n${output.text}`);
      // a worker serves its metrics before it joins: wait for both joins too
      await waitFor(() => [0, 1].every((i) => new RegExp(`\\[worker ${i}\\] worker \\d+: joined run`).test(output.text)), 60_000, () => output.text);
      workerPids.push(workerPid(output.text, 0), workerPid(output.text, 1));
      // the file agrees with what the processes announced
      const coordinatorAt = /^coordinator: metrics on http:\/\/(\S+)\/metrics$/m.exec(output.text)?.[1];
      assert.deepEqual(groups().find((g) => g.labels.role === 'coordinator')?.targets, [coordinatorAt]);
      for (const i of [0, 1]) {
        const announced = new RegExp(`^  \\[worker ${i}\\] worker: metrics on http://(\\S+)/metrics$`, 'm').exec(output.text)?.[1];
        assert.deepEqual(groups().find((g) => g.labels.worker === `local-${i}`)?.targets, [announced]);
      }
      // the real processes' exposition follows the naming rules too
      for (const g of groups()) {
        const families = parseExposition(await (await fetch(`http://${g.targets[0]}/metrics`, { signal: AbortSignal.timeout(10_000) })).text());
        assert.deepEqual([...namingProblems(families), ...labelProblems(families)], [], g.targets[0]);
      }

      const port = await freePort();
      const config = path.join(dir, 'prometheus.yml');
      writeFileSync(config, `global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: pretrain\n    file_sd_configs:\n      - files: [${JSON.stringify(targetsFile)}]\n`);
      const server = spawn(prometheus, [`--config.file=${config}`, `--storage.tsdb.path=${path.join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(server);
      const serverOutput = collect(server);
      const api = `http://127.0.0.1:${port}`;
      const diagnose = () => `prometheus:\n${serverOutput.text.slice(-3000)}\nrun:\n${output.text.slice(-3000)}`;
      await waitFor(async () => (await fetch(`${api}/-/ready`, { signal: AbortSignal.timeout(2_000) }).catch(() => undefined))?.ok === true, 30_000, diagnose);
      const query = async (q: string): Promise<Sample[]> => {
        const res = await fetch(`${api}/api/v1/query?query=${encodeURIComponent(q)}`, { signal: AbortSignal.timeout(10_000) });
        const body = (await res.json()) as { status: string; error?: string; data?: { result: Sample[] } };
        assert.equal(body.status, 'success', `${q}: ${body.error}`);
        return body.data!.result;
      };
      const scalar = async (q: string): Promise<number | undefined> => {
        const result = await query(q);
        return result.length === 1 ? Number(result[0]!.value[1]) : undefined;
      };
      /**
       * What a query should show, within 20 s: on 2 busy cores a scrape can miss its 1 s
       * timeout, and Prometheus then marks the target's series stale until the next one.
       */
      const soon = async (q: string, check: (result: Sample[]) => boolean, what: string): Promise<void> => {
        let last: Sample[] = [];
        await waitFor(async () => check((last = await query(q))), 20_000, () => `${what}: ${q} gave ${JSON.stringify(last)}\n${diagnose()}`);
      };
      const value = (result: Sample[]) => (result.length === 1 ? Number(result[0]!.value[1]) : NaN);

      // Prometheus applies discovered targets within ~5 s, then scrapes every second
      await waitFor(async () => (await query('up == 1')).length === 3, 60_000, diagnose);
      assert.deepEqual((await query('up')).map((s) => s.metric.worker ?? s.metric.role).sort(), ['coordinator', 'local-0', 'local-1']);

      // tokens rise across scrapes
      await waitFor(async () => ((await scalar('pretrain_tokens_total')) ?? 0) > 0, 60_000, diagnose);
      const firstTokens = (await scalar('pretrain_tokens_total'))!;
      await waitFor(async () => ((await scalar('pretrain_tokens_total')) ?? 0) > firstTokens, 60_000, diagnose);
      await waitFor(async () => ((await scalar('increase(pretrain_tokens_total[1m])')) ?? 0) > 0, 60_000, diagnose);
      await soon('pretrain_world_size', (r) => value(r) === 2, 'world size 2');
      await soon('pretrain_step_duration_seconds_count', (r) => value(r) > 0, 'the step histogram has observations');
      await soon('pretrain_step_duration_seconds_bucket', (r) => r.length > 2, 'the step histogram has buckets');
      await soon('pretrain_build_info{role="coordinator",backend="none"}', (r) => value(r) === 1, "the coordinator's build_info");
      // every worker's own series, by rank
      await waitFor(async () => (await query('pretrain_worker_tokens_total > 0')).length === 2, 60_000, diagnose);
      await soon('pretrain_worker_tokens_total', (r) => r.map((s) => s.metric.rank).sort().join() === '0,1', 'a series per rank');
      await soon('pretrain_allreduce_bytes_total{direction="sent"} > 0', (r) => r.length === 2, 'all-reduce bytes of both ranks');
      await soon('pretrain_allreduce_duration_seconds_count > 0', (r) => r.length === 2, 'all-reduce times of both ranks');
      await soon('pretrain_device_to_host_copy_duration_seconds_count > 0', (r) => r.length === 2, 'gradient copy times of both ranks');
      await soon('pretrain_build_info{role="worker",backend="cpu"}', (r) => r.length === 2, "the workers' build_info");
      // the README's all-reduce share of the step, per rank
      await waitFor(async () => (await query('sum by (rank) (rate(pretrain_allreduce_duration_seconds_sum[1m])) / scalar(rate(pretrain_step_duration_seconds_sum[1m])) > 0')).length === 2, 30_000, diagnose);

      // a worker SIGKILLed: the run goes on with 1 (--min-workers 1), and Prometheus sees it
      process.kill(workerPids[1]!, 'SIGKILL');
      await waitFor(() => /going on with 1 worker/.test(output.text), 60_000, diagnose);
      await waitFor(async () => (await scalar('pretrain_world_size')) === 1, 60_000, diagnose);
      await waitFor(async () => (await scalar('up{worker="local-1"}')) === 0, 60_000, diagnose);
      await soon('max_over_time(pretrain_world_size[5m])', (r) => value(r) === 2, 'the series went 2 -> 1');
      await soon('pretrain_membership_changes_total{change="shrink"}', (r) => value(r) === 1, 'one shrink');
      await soon('pretrain_aborted_steps_total', (r) => value(r) >= 1, 'the step the worker was lost in was aborted');
      // and keeps committing at world size 1
      const tokensAtOne = (await scalar('pretrain_tokens_total'))!;
      await waitFor(async () => ((await scalar('pretrain_tokens_total')) ?? 0) > tokensAtOne, 60_000, diagnose);

      // the Grafana dashboard: every query of every panel (and of its variables) has an answer
      // here, and so has every metric it names on its own (no panel reads a series that does not exist)
      const dashboard = readDashboard();
      const queries = dashboardQueries(dashboard);
      for (const { where, expr } of queries) await soon(promQL(expr, dashboard), (r) => r.length > 0, `${where} answers`);
      for (const name of new Set(queries.flatMap((q) => metricNames(q.expr)))) await soon(`count(${name})`, (r) => r.length > 0, `${name}, which the dashboard reads, exists`);

      coordinator.kill('SIGTERM');
      assert.equal(await exitOf(coordinator, 60_000), 0, output.text);
      server.kill('SIGTERM');
      await exitOf(server, 15_000);
    } finally {
      for (const child of children) child.kill('SIGKILL');
      // the local workers are their own process group: they outlive a coordinator killed outright
      for (const pid of workerPids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone already, as it should be
        }
      }
    }
  });
});

describe('the Grafana dashboard (k8s/grafana/pretrain-dashboard.json)', () => {
  it('schema 39, a datasource variable every panel and query uses, unique ids, a query on every panel', () => {
    const d = readDashboard();
    assert.equal(d.schemaVersion, 39);
    assert.equal(d.uid, 'tfjs-pretrain-run');
    const datasource = d.templating.list.find((v) => v.type === 'datasource');
    assert.equal(datasource?.query, 'prometheus');
    const ref = { type: 'prometheus', uid: `\${${datasource.name}}` };
    const panels = dashboardPanels(d);
    assert.equal(new Set(panels.map((p) => p.id)).size, panels.length, 'unique panel ids');
    for (const p of panels.filter((p) => p.type !== 'row')) {
      assert.deepEqual(p.datasource, ref, p.title);
      assert.ok((p.targets ?? []).length > 0, `${p.title}: no query`);
      for (const t of p.targets ?? []) {
        assert.deepEqual(t.datasource, ref, `${p.title} ${t.refId}`);
        assert.doesNotThrow(() => promQL(t.expr, d), `${p.title} ${t.refId}`);
      }
      assert.ok(p.gridPos.w > 0 && p.gridPos.x + p.gridPos.w <= 24, `${p.title}: gridPos`);
    }
    // what the README's Metrics section promises the dashboard shows
    const titles = panels.map((p) => p.title);
    for (const t of ['Tokens/s', 'Tokens/s per worker', 'Step time', 'All-reduce share of the step', 'Loss', 'Learning rate', 'Gradient norm', 'World size and generation', 'Membership changes and aborted steps', 'Checkpoint age', 'Epoch progress']) {
      assert.ok(titles.includes(t), `a panel "${t}"`);
    }
  });
});
