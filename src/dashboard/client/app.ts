/**
 * The dashboard page's script (runs in the browser; compiled by the package build, served as
 * /app.js). It opens the server's WebSocket, keeps the snapshot and what follows it, and draws
 * uPlot charts (uPlot is loaded before it as a plain script: `window.uPlot`). It only reads:
 * nothing is ever sent to the server.
 *
 * For tests and the curious, `window.__dashboard` is a read-only view of what the page holds:
 * points per chart, the workers table, the events, the connection.
 */
import type uPlot from 'uplot';
import type { CheckpointInfo, RunEvent, RunInfo, ServerMessage, StepPoint, WorkerRow, WorldPoint } from '../protocol.js';

const UPlot = (window as unknown as { uPlot: typeof uPlot }).uPlot;

const MAX_STEPS = 2000;
const MAX_EVENTS = 200;
const QUANTILE_WINDOW = 100;
const PALETTE = ['#2f6fde', '#e07b24', '#23884a', '#c93838', '#8d5bd1', '#1d9aa8', '#b59a1a', '#d45a9c', '#5b6b8c', '#7a4b2a'];

const state = {
  run: undefined as RunInfo | undefined,
  steps: [] as StepPoint[],
  events: [] as RunEvent[],
  workers: [] as readonly WorkerRow[],
  world: [] as WorldPoint[],
  checkpoint: null as CheckpointInfo | null,
  /** Server clock minus ours (ms). */
  offset: 0,
  connected: false,
  messages: 0,
};

const serverNow = (): number => Date.now() + state.offset;

function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el as T;
}

function format(n: number, digits = 4): string {
  if (!Number.isFinite(n)) return '–';
  if (n === 0) return '0';
  const a = Math.abs(n);
  if (a >= 1e5 || a < 1e-3) return n.toExponential(2);
  return a >= 100 ? Math.round(n).toLocaleString('en') : n.toPrecision(digits).replace(/\.?0+$/, '');
}

function ago(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const at = (sorted.length - 1) * q;
  const lo = Math.floor(at);
  const hi = Math.ceil(at);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (at - lo);
}

/** p50 and p95 of the step times of the `QUANTILE_WINDOW` steps up to each step. */
function rollingQuantiles(seconds: readonly number[]): { p50: number[]; p95: number[] } {
  const p50: number[] = [];
  const p95: number[] = [];
  for (let i = 0; i < seconds.length; i++) {
    const sorted = seconds.slice(Math.max(0, i + 1 - QUANTILE_WINDOW), i + 1).sort((a, b) => a - b);
    p50.push(quantile(sorted, 0.5));
    p95.push(quantile(sorted, 0.95));
  }
  return { p50, p95 };
}

const reduceShare = (p: StepPoint): number => (p.seconds > 0 ? (100 * Math.max(0, ...p.ranks.map((r) => r.reduceSeconds))) / p.seconds : NaN);
const rankSpread = (p: StepPoint): number => {
  const compute = p.ranks.map((r) => r.computeSeconds);
  return compute.length > 0 ? Math.max(...compute) - Math.min(...compute) : NaN;
};

// ---- charts ----

interface Chart {
  readonly id: string;
  readonly el: HTMLElement;
  plot: uPlot | undefined;
  /** The series labels the plot was made with: a new worker name makes it anew. */
  key: string;
  points: number;
}

const charts = new Map<string, Chart>();
for (const id of ['loss', 'lr', 'tokens', 'steptime', 'reduce', 'world']) charts.set(id, { id, el: byId(`chart-${id}`), plot: undefined, key: '', points: 0 });

function series(label: string, color: string, extra: Partial<uPlot.Series> = {}): uPlot.Series {
  return { label, stroke: color, width: 1.5, points: { show: false }, spanGaps: false, ...extra };
}

function draw(id: string, labels: readonly string[], data: uPlot.AlignedData, make: () => uPlot.Options['series'], time = false, extra: Partial<uPlot.Options> = {}): void {
  const chart = charts.get(id)!;
  const key = labels.join('\u0000');
  const width = Math.max(200, chart.el.clientWidth);
  if (!chart.plot || chart.key !== key) {
    chart.plot?.destroy();
    chart.el.replaceChildren();
    chart.plot = new UPlot({ width, height: 200, series: make(), scales: { x: { time } }, legend: { live: true }, cursor: { drag: { x: false, y: false } }, ...extra }, data, chart.el);
    chart.key = key;
  } else {
    chart.plot.setData(data);
  }
  chart.points = data[0].length;
  chart.el.dataset['points'] = String(chart.points);
}

function render(): void {
  const steps = state.steps;
  const x = steps.map((p) => p.step);
  draw('loss', ['loss'], [x, steps.map((p) => p.loss)], () => [{ label: 'step' }, series('loss', PALETTE[0]!)]);
  draw('lr', ['lr'], [x, steps.map((p) => p.learningRate)], () => [{ label: 'step' }, series('learning rate', PALETTE[1]!, { value: (_u, v) => (v === null ? '–' : v.toExponential(3)) })], false, {
    axes: [{}, { size: 70, values: (_u, ticks) => ticks.map((t) => t.toExponential(1)) }],
  });
  // tokens/s: the step's tokens over its wall time; each worker's share of it by its tokens
  const names = [...new Set(steps.flatMap((p) => p.ranks.map((r) => r.name)))].sort();
  const perWorker = names.map((name) => steps.map((p) => {
    const mine = p.ranks.filter((r) => r.name === name);
    return mine.length === 0 || p.seconds <= 0 ? null : mine.reduce((sum, r) => sum + r.tokens, 0) / p.seconds;
  }));
  draw('tokens', ['total', ...names], [x, steps.map((p) => (p.seconds > 0 ? p.tokens / p.seconds : null)), ...perWorker], () => [
    { label: 'step' },
    series('total', PALETTE[0]!, { width: 2 }),
    ...names.map((name, i) => series(name, PALETTE[(i + 1) % PALETTE.length]!, { dash: [4, 3] })),
  ]);
  const seconds = steps.map((p) => p.seconds);
  const { p50, p95 } = rollingQuantiles(seconds);
  draw('steptime', ['steptime'], [x, seconds, p50, p95, steps.map(rankSpread)], () => [
    { label: 'step' },
    series('step time', '#9aa3b5', { width: 1 }),
    series('p50', PALETTE[0]!, { width: 2 }),
    series('p95', PALETTE[3]!, { width: 2 }),
    series('rank spread', PALETTE[2]!, { dash: [4, 3] }),
  ]);
  draw('reduce', ['reduce'], [x, steps.map(reduceShare)], () => [{ label: 'step' }, series('all-reduce %', PALETTE[4]!, { fill: 'rgba(141, 91, 209, 0.12)' })]);
  // world size: stepped from each new generation, drawn on to now
  const world = [...state.world];
  if (world.length > 0 && state.run?.status === 'training') world.push({ ...world.at(-1)!, time: serverNow() });
  draw('world', ['world'], [world.map((w) => w.time / 1000), world.map((w) => w.worldSize)], () => [
    {},
    series('workers', PALETTE[2]!, { width: 2, paths: UPlot.paths.stepped!({ align: 1 }), fill: 'rgba(35, 136, 74, 0.1)' }),
  ], true, { scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(1, max) + 1] } } });
  // the chart counts the live "now" point too; the attribute tells the real changes
  charts.get('world')!.el.dataset['points'] = String(state.world.length);
  charts.get('world')!.points = state.world.length;
  renderTiles();
  renderWorkers();
  renderEvents();
}

// ---- tiles, tables ----

function setText(id: string, text: string): void {
  const el = byId(id);
  if (el.textContent !== text) el.textContent = text;
}

function renderTiles(): void {
  const run = state.run;
  setText('run-id', run?.runId ?? '');
  const status = byId('run-status');
  setText('run-status', run ? (run.message ? `${run.status}: ${run.message}` : run.status) : 'connecting');
  status.dataset['state'] = run?.status ?? 'starting';
  const last = state.steps.at(-1);
  setText('tile-step', last ? String(last.step) : '–');
  setText('tile-step-sub', run ? `of ${run.steps}` : '');
  setText('tile-loss', last ? format(last.loss) : '–');
  setText('tile-loss-sub', last ? `grad norm ${format(last.gradNorm, 3)}` : '');
  const recent = state.steps.slice(-20);
  const recentSeconds = recent.reduce((s, p) => s + p.seconds, 0);
  setText('tile-tokens', recentSeconds > 0 ? format(recent.reduce((s, p) => s + p.tokens, 0) / recentSeconds) : '–');
  setText('tile-tokens-sub', recent.length > 0 ? `last ${recent.length} steps` : '');
  const times = state.steps.slice(-QUANTILE_WINDOW).map((p) => p.seconds).sort((a, b) => a - b);
  setText('tile-steptime', times.length > 0 ? `${format(quantile(times, 0.5), 2)} / ${format(quantile(times, 0.95), 2)} s` : '–');
  setText('tile-steptime-sub', times.length > 0 ? `last ${times.length} steps` : '');
  const shares = recent.map(reduceShare).filter(Number.isFinite);
  setText('tile-reduce', shares.length > 0 ? `${(shares.reduce((a, b) => a + b, 0) / shares.length).toFixed(1)} %` : '–');
  setText('tile-reduce-sub', shares.length > 0 ? 'slowest rank' : '');
  const world = state.world.at(-1);
  setText('tile-world', world ? String(world.worldSize) : '–');
  setText('tile-world-sub', world ? `generation ${world.generation}` : '');
  if (last && last.epochSize > 0) {
    const share = last.consumedInEpoch / last.epochSize;
    setText('tile-epoch', `${last.epoch} · ${(100 * share).toFixed(1)} %`);
    byId('epoch-bar').style.width = `${(100 * share).toFixed(2)}%`;
  }
  const c = state.checkpoint;
  setText('tile-checkpoint', c ? ago(serverNow() - c.time) : 'none yet');
  setText('tile-checkpoint-sub', c ? `step ${c.step}, ${(c.bytes / 2 ** 20).toFixed(1)} MiB` : '');
}

const STATE_ORDER: Record<WorkerRow['state'], number> = { member: 0, joining: 1, waiting: 2, dropped: 3, refused: 4, left: 5 };

function renderWorkers(): void {
  const body = byId('workers').querySelector('tbody')!;
  const rows = [...state.workers].sort((a, b) => STATE_ORDER[a.state] - STATE_ORDER[b.state] || (a.rank ?? 0) - (b.rank ?? 0) || b.id - a.id);
  const now = serverNow();
  body.replaceChildren(
    ...rows.map((w) => {
      const tr = document.createElement('tr');
      tr.dataset['state'] = w.state;
      tr.dataset['worker'] = String(w.id);
      const gone = w.reason !== null;
      const cells = [w.rank === null ? '–' : String(w.rank), String(w.id), w.name, w.host, w.backend, w.state, gone ? `${ago(now - w.lastHeartbeat)} (gone)` : ago(now - w.lastHeartbeat)];
      cells.forEach((text, i) => {
        const td = document.createElement('td');
        td.textContent = text;
        if (i === 5) {
          td.className = 'state';
          if (w.reason) td.title = w.reason;
        }
        tr.append(td);
      });
      return tr;
    }),
  );
}

let eventsShown = -1;
function renderEvents(): void {
  const last = state.events.at(-1)?.seq ?? 0;
  if (last === eventsShown) return;
  eventsShown = last;
  byId('events').replaceChildren(
    ...[...state.events].reverse().map((e) => {
      const li = document.createElement('li');
      li.dataset['kind'] = e.kind;
      const time = document.createElement('time');
      time.dateTime = new Date(e.time).toISOString();
      time.textContent = new Date(e.time - state.offset).toLocaleTimeString('en-GB');
      const kind = document.createElement('span');
      kind.className = 'kind';
      kind.textContent = e.kind;
      const text = document.createElement('span');
      text.textContent = e.text;
      li.append(time, kind, text);
      return li;
    }),
  );
}

// ---- the connection ----

let renderTimer: number | undefined;
function scheduleRender(): void {
  renderTimer ??= window.setTimeout(() => {
    renderTimer = undefined;
    render();
  }, 150);
}

function receive(m: ServerMessage): void {
  state.messages++;
  switch (m.type) {
    case 'snapshot':
      state.offset = m.now - Date.now();
      state.run = m.run;
      state.steps = [...m.steps];
      state.events = [...m.events];
      state.workers = m.workers;
      state.world = [...m.world];
      state.checkpoint = m.checkpoint;
      break;
    case 'step':
      while (state.steps.length > 0 && state.steps.at(-1)!.step >= m.point.step) state.steps.pop();
      state.steps.push(m.point);
      if (state.steps.length > MAX_STEPS) state.steps.splice(0, state.steps.length - MAX_STEPS);
      break;
    case 'event':
      state.events.push(m.event);
      if (state.events.length > MAX_EVENTS) state.events.splice(0, state.events.length - MAX_EVENTS);
      break;
    case 'workers':
      state.offset = m.now - Date.now();
      state.workers = m.workers;
      break;
    case 'world':
      state.world.push(m.point);
      if (state.world.length > MAX_STEPS) state.world.splice(0, state.world.length - MAX_STEPS);
      break;
    case 'checkpoint':
      state.checkpoint = m.checkpoint;
      break;
    case 'run':
      state.run = m.run;
      break;
  }
  scheduleRender();
}

function setConnection(open: boolean): void {
  state.connected = open;
  const el = byId('connection');
  el.dataset['state'] = open ? 'open' : 'closed';
  el.textContent = open ? 'live' : 'disconnected: retrying';
}

function connect(): void {
  const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
  ws.addEventListener('open', () => setConnection(true));
  ws.addEventListener('message', (e: MessageEvent<string>) => receive(JSON.parse(e.data) as ServerMessage));
  ws.addEventListener('close', () => {
    setConnection(false);
    // a run that ended has nothing more to say
    if (state.run?.status !== 'ended' && state.run?.status !== 'failed') window.setTimeout(connect, 2000);
  });
}

window.addEventListener('resize', () => {
  for (const chart of charts.values()) chart.plot?.setSize({ width: Math.max(200, chart.el.clientWidth), height: 200 });
});
// ages (heartbeats, the last checkpoint) move on between messages
window.setInterval(() => {
  renderTiles();
  renderWorkers();
}, 1000);

Object.defineProperty(window, '__dashboard', {
  value: Object.freeze({
    get connected(): boolean {
      return state.connected;
    },
    get messages(): number {
      return state.messages;
    },
    get lastStep(): number {
      return state.steps.at(-1)?.step ?? 0;
    },
    get status(): string {
      return state.run?.status ?? 'connecting';
    },
    get points(): Record<string, number> {
      return Object.fromEntries([...charts.values()].map((c) => [c.id, c.points]));
    },
    get workers(): WorkerRow[] {
      return state.workers.map((w) => ({ ...w }));
    },
    get events(): RunEvent[] {
      return state.events.map((e) => ({ ...e }));
    },
  }),
});

render();
connect();
