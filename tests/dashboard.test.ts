/**
 * The live dashboard (src/dashboard): its bounded history, who may look (loopback only, or
 * the run's token, on HTTP and on the WebSocket upgrade), and a real 2-worker run watched
 * from a real headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core):
 * the page loads with no console error, its charts gain points as steps commit, and a
 * worker killed with SIGKILL shows as dropped, with its event. The test saves a screenshot
 * in its temporary folder; with UPDATE_SCREENSHOT=1 also docs/dashboard.png (the README's).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { chromium, type BrowserContext } from 'playwright-core';
import { WebSocket } from 'ws';
import { JoinToken } from '../src/comm/auth.js';
import { guardObserver, type ObservedWorker } from '../src/coordinator/observer.js';
import { hostOf, RunHistory } from '../src/dashboard/history.js';
import type { ServerMessage, Snapshot } from '../src/dashboard/protocol.js';
import { type Dashboard, isLoopback, startDashboard } from '../src/dashboard/server.js';
import { prepareRunData, runScript } from './helpers.js';
import { collect, exitOf, killQuietly, waitFor } from './fixtures/processes.js';

const CLI = fileURLToPath(new URL('../coordinator/cli.js', import.meta.url));
const README_SCREENSHOT = fileURLToPath(new URL('../../docs/dashboard.png', import.meta.url));
const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

let dir: string;
const data = { mlm: '', seq2seq: '' };

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'dashboard-'));
  Object.assign(data, await prepareRunData(dir));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function worker(id: number, name: string, gone?: string): ObservedWorker {
  return { id, name, backend: 'cpu', dataAddress: `10.0.0.${id}:7071`, lastHeartbeat: 1000, gone };
}

function step(n: number, history: RunHistory): void {
  history.onStep({ step: n, loss: 8 - n / 100, learningRate: 0.01, gradNorm: 1, tokens: 100, samples: 4, seconds: 0.5, perWorker: [], worldSize: 2, generation: 1, epoch: 0, consumedInEpoch: 4 * n, epochSize: 1000 });
}

describe('dashboard history', () => {
  it('keeps the last steps, events and workers within bounds, and tells its listeners each change', () => {
    const history = new RunHistory({ runId: 'r', steps: 100, globalBatch: 4 }, { steps: 5, events: 3, world: 2, workers: 2 }, () => 42);
    const heard: ServerMessage[] = [];
    history.subscribe((m) => heard.push(m));
    for (let n = 1; n <= 8; n++) step(n, history);
    for (let g = 1; g <= 3; g++) history.onMembership({ generation: g, step: 0, members: [worker(1, 'a')] });
    const s = history.snapshot();
    assert.deepEqual(s.steps.map((p) => p.step), [4, 5, 6, 7, 8]);
    assert.equal(s.events.length, 3);
    assert.deepEqual(s.world.map((w) => w.generation), [2, 3]);
    assert.equal(heard.filter((m) => m.type === 'step').length, 8);
    // a step run again after a resume replaces those it voids
    step(6, history);
    assert.deepEqual(history.snapshot().steps.map((p) => p.step), [4, 5, 6]);
    for (let id = 2; id <= 5; id++) {
      history.onWorkerJoined(worker(id, `w${id}`, 'killed'), 'waiting');
      history.onWorkerGone(worker(id, `w${id}`, 'killed'));
    }
    assert.ok(history.snapshot().workers.length <= 3, 'gone workers are forgotten first');
  });

  it('tracks worker states: waiting, member with its rank, dropped with the reason, joining, refused; and the run\'s end', () => {
    const history = new RunHistory({ runId: 'r', steps: 100, globalBatch: 4 });
    const [a, b, c] = [worker(1, 'a'), worker(2, 'b'), worker(3, 'c')];
    history.onWorkerJoined(a, 'waiting');
    history.onWorkerJoined(b, 'waiting');
    history.onWorkerJoined(c, 'waiting');
    history.onRunStart({ runId: 'r', firstStep: 1, steps: 100, globalBatch: 4, resumedFrom: undefined });
    history.onMembership({ generation: 1, step: 0, members: [b, a] });
    const rows = () => new Map(history.snapshot().workers.map((w) => [w.name, w]));
    assert.deepEqual([rows().get('b')!.rank, rows().get('a')!.rank, rows().get('c')!.state], [0, 1, 'refused']);
    assert.equal(rows().get('a')!.host, '10.0.0.1');
    // the view is live: the session it shows is marked gone, then the observer told
    history.onWorkerGone(Object.assign(a, { gone: 'its instruction stream was cancelled' }));
    assert.deepEqual([rows().get('a')!.state, rows().get('a')!.reason, rows().get('a')!.rank], ['dropped', 'its instruction stream was cancelled', null]);
    history.onWorkerJoined(worker(4, 'a'), 'joining');
    assert.match(history.snapshot().events.at(-1)!.text, /worker 4 \(a\) joined again .*next step boundary/);
    history.onCheckpoint({ step: 10, dir: '/runs/r/ckpt-00000010', bytes: 2 ** 20, seconds: 0.25 });
    history.ended({ error: 'boom' });
    const s = history.snapshot();
    assert.equal(s.run.status, 'failed');
    assert.equal(s.checkpoint?.step, 10);
    assert.deepEqual(s.events.map((e) => e.kind), ['join', 'join', 'join', 'run', 'membership', 'drop', 'join', 'checkpoint', 'end']);
  });

  it('an observer\'s failure never reaches the run: logged once per method', () => {
    const lines: string[] = [];
    const broken = new RunHistory({ runId: 'r', steps: 1, globalBatch: 1 });
    broken.onStep = () => {
      throw new Error('boom');
    };
    const guarded = guardObserver(broken, (l) => lines.push(l));
    for (let i = 0; i < 3; i++) guarded.onStep({ step: 1, loss: 1, learningRate: 0, gradNorm: 0, tokens: 0, samples: 0, seconds: 0, perWorker: [], worldSize: 1, generation: 1, epoch: 0, consumedInEpoch: 0, epochSize: 1 });
    guarded.onStepAborted(2, 'why');
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /failed in onStep .*boom/);
  });

  it('ships in the images: uplot and ws are runtime dependencies, the page script is under dist/src', () => {
    const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../../package.json', import.meta.url)), 'utf8')) as { dependencies: Record<string, string>; devDependencies: Record<string, string> };
    for (const name of ['uplot', 'ws']) assert.match(pkg.dependencies[name] ?? '', /^\d+\.\d+\.\d+$/, `${name}: an exact-pinned dependency (npm ci --omit=dev installs it)`);
    assert.match(pkg.devDependencies['playwright-core'] ?? '', /^\d+\.\d+\.\d+$/);
    assert.ok(existsSync(fileURLToPath(new URL('../src/dashboard/client/app.js', import.meta.url))));
    for (const flavour of ['cpu', 'gpu']) {
      const dockerfile = readFileSync(fileURLToPath(new URL(`../../docker/${flavour}.Dockerfile`, import.meta.url)), 'utf8');
      assert.match(dockerfile, /^COPY --from=build \/src\/dist\/src dist\/src$/m, `${flavour}: the runtime has dist/src (the dashboard's server and page script)`);
    }
  });

  it('reads hosts and loopback addresses', () => {
    assert.equal(hostOf('10.1.2.3:7071', 'n'), '10.1.2.3');
    assert.equal(hostOf('[::1]:7071', 'n'), '::1');
    assert.equal(hostOf('', 'local-0'), 'local-0');
    for (const h of ['127.0.0.1', '127.3.2.1', 'localhost', '::1', '[::1]']) assert.ok(isLoopback(h), h);
    for (const h of ['0.0.0.0', '10.0.0.1', '::', 'example.com', '127.0.0.1.evil.com']) assert.ok(!isLoopback(h), h);
  });
});

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function get(port: number, pathname: string, headers: Record<string, string> = {}, method = 'GET', body?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: pathname, method, headers, timeout: 10_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

/** The first message on the dashboard's WebSocket, or how the upgrade was refused. */
function firstMessage(port: number, headers: Record<string, string> = {}, query = ''): Promise<Snapshot | { refused: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws${query}`, { headers, handshakeTimeout: 10_000 });
    ws.on('message', (d: Buffer) => {
      resolve(JSON.parse(d.toString()) as Snapshot);
      ws.close();
    });
    ws.on('unexpected-response', (_req, res) => {
      resolve({ refused: res.statusCode ?? 0 });
      ws.terminate();
    });
    ws.on('error', reject);
  });
}

describe('dashboard server: read-only, loopback or the run\'s token', () => {
  it('on 127.0.0.1 needs no token, but only answers to loopback host names, to GET, and to sockets of its own page', async () => {
    const history = new RunHistory({ runId: 'loop', steps: 10, globalBatch: 4 });
    step(1, history);
    const dashboard = await startDashboard({ history, port: 0 });
    try {
      const port = dashboard.address.port;
      assert.equal(dashboard.tokenRequired, false);
      assert.equal(dashboard.url, `http://127.0.0.1:${port}/`);
      const page = await get(port, '/');
      assert.equal(page.status, 200);
      assert.match(page.body, /<script type="module" src="\/app.js">/);
      assert.match(String(page.headers['content-security-policy']), /script-src 'self'/);
      for (const asset of ['/app.js', '/style.css', '/vendor/uPlot.iife.min.js', '/vendor/uPlot.min.css']) assert.equal((await get(port, asset)).status, 200, asset);
      assert.doesNotMatch((await get(port, '/app.js')).body, /sourceMappingURL/);
      assert.equal((await get(port, '/', { host: 'attacker.example:80' })).status, 421, 'a rebound host name');
      assert.equal((await get(port, '/', { host: `localhost:${port}` })).status, 200);
      assert.equal((await get(port, '/', {}, 'POST', 'x')).status, 405);
      assert.equal((await get(port, '/login', {}, 'POST', 'token=x')).status, 405, 'no login on loopback');
      assert.equal((await get(port, '/nothing')).status, 404);
      const snapshot = JSON.parse((await get(port, '/api/snapshot')).body) as Snapshot;
      assert.deepEqual(snapshot.steps.map((p) => p.step), [1]);
      const first = await firstMessage(port, { origin: `http://127.0.0.1:${port}` });
      assert.ok('type' in first && first.type === 'snapshot' && first.run.runId === 'loop');
      assert.deepEqual(await firstMessage(port, { origin: 'http://attacker.example' }), { refused: 403 });
    } finally {
      await dashboard.close();
    }
  });

  it('on another address asks every request for the run\'s token (header, ?token= once, or the login form), checked on the WebSocket upgrade too', async () => {
    const secret = 'dashboard-test-token-0123456789abcdef';
    const token = new JoinToken(secret);
    const history = new RunHistory({ runId: 'open', steps: 10, globalBatch: 4 });
    await assert.rejects(startDashboard({ history, host: '0.0.0.0', port: 0 }), /needs the run's token/);
    let dashboard: Dashboard | undefined;
    try {
      // port 0: a free port, on every interface for the length of this test
      dashboard = await startDashboard({ history, host: '0.0.0.0', port: 0, token });
      const port = dashboard.address.port;
      assert.equal(dashboard.tokenRequired, true);
      assert.ok(!dashboard.url.includes(secret));
      for (const p of ['/', '/api/snapshot', '/app.js', '/vendor/uPlot.iife.min.js']) {
        const r = await get(port, p);
        assert.equal(r.status, 401, p);
        assert.ok(!r.body.includes('"type":"snapshot"'), p);
      }
      assert.match((await get(port, '/')).body, /<form method="post" action="\/login">/);
      assert.equal((await get(port, '/style.css')).status, 200, 'the login form\'s style');
      assert.equal((await get(port, '/?token=wrong-token-wrong-token')).status, 401);
      assert.equal((await get(port, '/', { authorization: 'Bearer wrong-token-wrong-token' })).status, 401);
      assert.equal((await get(port, '/api/snapshot', { authorization: `Bearer ${secret}` })).status, 200);
      // ?token= once: a session cookie, and the token out of the address
      const once = await get(port, `/?token=${secret}&x=1`);
      assert.equal(once.status, 303);
      assert.equal(once.headers.location, '/?x=1');
      const cookie = String(once.headers['set-cookie']).split(';')[0]!;
      assert.ok(!cookie.includes(secret), 'the cookie is a session, not the token');
      assert.equal((await get(port, '/', { cookie })).status, 200);
      assert.equal((await get(port, '/', { cookie: 'pretrain_dashboard=forged' })).status, 401);
      // the login form
      assert.equal((await get(port, '/login', { 'content-type': 'application/x-www-form-urlencoded' }, 'POST', 'token=nope')).status, 401);
      const form = await get(port, '/login', { 'content-type': 'application/x-www-form-urlencoded' }, 'POST', `token=${encodeURIComponent(secret)}`);
      assert.equal(form.status, 303);
      assert.equal((await get(port, '/', { cookie: String(form.headers['set-cookie']).split(';')[0]! })).status, 200);
      // the WebSocket upgrade
      assert.deepEqual(await firstMessage(port), { refused: 401 });
      assert.deepEqual(await firstMessage(port, { authorization: 'Bearer wrong-token-wrong-token' }), { refused: 401 });
      assert.deepEqual(await firstMessage(port, {}, '?token=wrong-token-wrong-token'), { refused: 401 });
      assert.equal(((await firstMessage(port, { cookie })) as Snapshot).type, 'snapshot');
      assert.equal(((await firstMessage(port, { authorization: `Bearer ${secret}` })) as Snapshot).type, 'snapshot');
    } finally {
      await dashboard?.close();
    }
  });
});

describe('coordinator start --dashboard-host', () => {
  it('off loopback: the printed address asks for the token and never holds it', { timeout: 60_000 }, async () => {
    const runDir = path.join(dir, 'open');
    // no worker comes: the run stops after --join-timeout, having served its dashboard on a free port
    const r = await runScript(CLI, ['start', '--run-dir', runDir, '--data', data.mlm, '--local-workers', '0', '--workers', '1', '--preset', 'L1-H32', '--join-timeout', '1', '--dashboard-port', '0', '--dashboard-host', '0.0.0.0'], { timeout: 50_000 });
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stdout, /coordinator: dashboard on http:\/\/0\.0\.0\.0:\d+\/ \(it asks for the run's join token, or open it once with \?token=<token>\)/);
    const secret = readFileSync(path.join(runDir, 'join-token'), 'utf8').trim();
    assert.ok(!(r.stdout + r.stderr).includes(secret));
  });
});

describe('dashboard of a real run in headless Chromium', () => {
  it('loads with no console error, its charts gain points as steps commit, a killed worker shows as dropped', { timeout: 300_000 }, async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium (.ci/run does)`);
    const runDir = path.join(dir, 'run');
    // UPDATE_SCREENSHOT=1: the README's picture, with longer curves
    const readme = process.env['UPDATE_SCREENSHOT'] === '1';
    const optimizer = '{"type":"adafactor","learningRate":0.01,"wrappers":[{"type":"piecewiseLinear","schedule":{"30":1,"1000":0.1}}]}';
    const coordinator = spawn(
      process.execPath,
      [CLI, 'start', '--log-format', 'text', '--run-dir', runDir, '--data', data.mlm, '--local-workers', '2', '--backend', 'cpu', '--preset', 'L1-H32', '--global-batch', '4', '--steps', '1000', '--optimizer', optimizer, '--checkpoint-every', readme ? '50' : '10', '--log-every', '5', '--min-workers', '1', '--dashboard-port', '0'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const output = collect(coordinator);
    let context: BrowserContext | undefined;
    const problems: string[] = [];
    const pids: number[] = [];
    try {
      await waitFor(() => /dashboard on http:\/\/\S+/.test(output.text) && /step +1\/1000/.test(output.text), 120_000, () => output.text);
      const url = /dashboard on (http:\/\/\S+)/.exec(output.text)![1]!;
      assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
      for (const i of [0, 1]) pids.push(Number(new RegExp(`\\[worker ${i}\\] worker \\d+: joined run .*\\(pid (\\d+)`).exec(output.text)![1]));

      context = await chromium.launchPersistentContext(path.join(dir, 'chromium-profile'), { executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, viewport: { width: 1400, height: 900 }, timeout: 60_000 });
      const page = context.pages()[0] ?? (await context.newPage());
      page.on('console', (m) => {
        if (m.type() === 'error') problems.push(`console: ${m.text()}`);
      });
      page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
      page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`));
      page.on('response', (r) => {
        if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`);
      });
      await page.goto(url, { waitUntil: 'load', timeout: 60_000 });
      await page.waitForFunction(() => (window as unknown as { __dashboard?: { connected: boolean; lastStep: number } }).__dashboard?.connected === true, undefined, { timeout: 30_000 });

      type Points = Record<string, number>;
      const points = (): Promise<Points> => page.evaluate(() => (window as unknown as { __dashboard: { points: Record<string, number> } }).__dashboard.points);
      const attribute = (id: string): Promise<number> => page.locator(`#chart-${id}`).getAttribute('data-points').then(Number);
      await page.waitForFunction(() => (window as unknown as { __dashboard: { points: Record<string, number> } }).__dashboard.points['loss']! >= 2, undefined, { timeout: 60_000 });
      const first = await points();
      // the charts gain points as steps commit
      await page.waitForFunction((n) => (window as unknown as { __dashboard: { points: Record<string, number> } }).__dashboard.points['loss']! >= n + 3, first['loss']!, { timeout: 90_000 });
      const later = await points();
      for (const id of ['loss', 'lr', 'tokens', 'steptime', 'reduce']) {
        assert.ok(later[id]! >= first[id]! + 3, `${id}: ${first[id]} -> ${later[id]} points`);
        assert.ok((await attribute(id)) >= first[id]! + 3, `#chart-${id}[data-points]`);
      }
      assert.equal(later['world'], 1, 'one generation so far');
      const members = await page.locator('#workers tbody tr[data-state="member"]').count();
      assert.equal(members, 2);
      assert.match(await page.locator('#tile-step').innerText(), /^\d+$/);
      assert.match(await page.locator('#tile-step-sub').innerText(), /^of 1000$/);

      if (readme) await page.waitForFunction(() => (window as unknown as { __dashboard: { lastStep: number } }).__dashboard.lastStep >= 70, undefined, { timeout: 240_000 });
      // a worker killed: dropped in the table, an event, a second generation
      process.kill(pids[1]!, 'SIGKILL');
      await page.locator('#workers tbody tr[data-state="dropped"]', { hasText: 'local-1' }).waitFor({ timeout: 60_000 });
      await page.locator('#events li[data-kind="drop"]', { hasText: 'local-1' }).waitFor({ timeout: 30_000 });
      await page.waitForFunction(() => (window as unknown as { __dashboard: { points: Record<string, number> } }).__dashboard.points['world']! >= 2, undefined, { timeout: 60_000 });
      const state = await page.evaluate(() => {
        const d = (window as unknown as { __dashboard: { workers: { name: string; state: string }[]; events: { kind: string; text: string }[]; lastStep: number } }).__dashboard;
        return { workers: d.workers, events: d.events, lastStep: d.lastStep };
      });
      assert.equal(state.workers.find((w) => w.name === 'local-1')?.state, 'dropped');
      assert.equal(state.workers.find((w) => w.name === 'local-0')?.state, 'member');
      assert.ok(state.events.some((e) => e.kind === 'drop' && /local-1/.test(e.text)), JSON.stringify(state.events));
      // the run goes on with one worker, and the charts with it; a checkpoint shows its age
      await page.waitForFunction((n) => (window as unknown as { __dashboard: { lastStep: number } }).__dashboard.lastStep >= n + 3, state.lastStep, { timeout: 90_000 });
      await page.waitForFunction(() => (window as unknown as { __dashboard: { events: { kind: string }[] } }).__dashboard.events.some((e) => e.kind === 'checkpoint'), undefined, { timeout: 90_000 });
      await page.waitForFunction(() => document.getElementById('tile-checkpoint')?.textContent?.includes('ago') === true, undefined, { timeout: 10_000 });
      if (readme) await page.waitForFunction(() => (window as unknown as { __dashboard: { lastStep: number } }).__dashboard.lastStep >= 140, undefined, { timeout: 240_000 });
      await page.waitForTimeout(1200);

      const shot = path.join(dir, 'dashboard.png');
      await page.screenshot({ path: shot, fullPage: true });
      assert.ok(readFileSync(shot).subarray(1, 4).toString() === 'PNG');
      if (readme) copyFileSync(shot, README_SCREENSHOT);
      assert.deepEqual(problems, [], 'no console error, failed request or page error');
      const secret = readFileSync(path.join(runDir, 'join-token'), 'utf8').trim();
      assert.ok(!output.text.includes(secret), 'the token is never printed');
    } finally {
      await context?.close().catch(() => undefined);
      coordinator.kill('SIGTERM');
      await exitOf(coordinator, 30_000).catch(() => coordinator.kill('SIGKILL'));
      for (const pid of pids) killQuietly(pid);
    }
  });
});
