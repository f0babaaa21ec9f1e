/** The Prometheus text format, parsed as far as the metrics tests need it, the naming rules they check, and the Grafana dashboard's queries. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface Family {
  name: string;
  type: string;
  samples: { name: string; labels: Record<string, string>; value: number }[];
}

/** The Prometheus text format, as far as these checks need it. */
export function parseExposition(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  let current: Family | undefined;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) {
      current = { name: type[1]!, type: type[2]!, samples: [] };
      families.set(current.name, current);
      continue;
    }
    if (line.startsWith('#')) continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(sample, `not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const m of (sample[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[m[1]!] = m[2]!;
    assert.ok(current && sample[1]!.startsWith(current.name), `sample ${sample[1]} outside its family`);
    current.samples.push({ name: sample[1]!, labels, value: Number(sample[3]) });
  }
  return families;
}

/** Prometheus naming, as the README's Metrics section promises it. */
export function namingProblems(families: Map<string, Family>): string[] {
  const problems: string[] = [];
  const ours = (name: string) => !name.startsWith('process_') && !name.startsWith('nodejs_');
  for (const f of families.values()) {
    if (ours(f.name) && !f.name.startsWith('pretrain_')) problems.push(`${f.name}: not under the project's prefix pretrain_`);
    if (!/^[a-z_][a-z0-9_]*$/.test(f.name)) problems.push(`${f.name}: not snake_case`);
    if (f.type === 'counter' && !f.name.endsWith('_total')) problems.push(`${f.name}: a counter whose name does not end in _total`);
    // prom-client's own nodejs_active_*_total are gauges of long standing: the rule binds our series
    if (ours(f.name) && f.type !== 'counter' && f.name.endsWith('_total')) problems.push(`${f.name}: a ${f.type} named like a counter`);
    if (/(_ms|_milliseconds|_minutes|_hours|_kb|_mb|_kib|_mib|_percent)(_|$)/.test(f.name)) problems.push(`${f.name}: not in base units (seconds, bytes, ratios)`);
    if (/(duration|latency|_time)(_|$)/.test(f.name) && !/_seconds(_total)?$/.test(f.name)) problems.push(`${f.name}: a time not ending in _seconds`);
    if (/bytes/.test(f.name) && !/_bytes(_total)?$/.test(f.name)) problems.push(`${f.name}: a size not ending in _bytes`);
    if (f.type === 'histogram' && !/_(seconds|bytes)$/.test(f.name)) problems.push(`${f.name}: a histogram without its unit`);
  }
  return problems;
}

/** Every label of our series, and no value that looks like a step or record id. */
const ALLOWED_LABELS = new Set(['rank', 'host', 'direction', 'change', 'epoch', 'version', 'node', 'backend', 'le']);

export function labelProblems(families: Map<string, Family>): string[] {
  const problems: string[] = [];
  for (const f of families.values()) {
    if (!f.name.startsWith('pretrain_')) continue;
    for (const s of f.samples) {
      for (const key of Object.keys(s.labels)) if (!ALLOWED_LABELS.has(key)) problems.push(`${s.name}: label ${key} is not one of the bounded labels`);
    }
  }
  return problems;
}


/** The Grafana dashboard (k8s/grafana/), as far as the tests read it. */
export interface Dashboard {
  uid: string;
  title: string;
  schemaVersion: number;
  panels: DashboardPanel[];
  templating: { list: { name: string; type: string; query?: string | { query: string }; allValue?: string }[] };
}

export interface DashboardPanel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  gridPos: { h: number; w: number; x: number; y: number };
  targets?: { expr: string; refId: string; datasource?: { type: string; uid: string } }[];
  panels?: DashboardPanel[];
}

export const DASHBOARD_FILE = fileURLToPath(new URL('../../k8s/grafana/pretrain-dashboard.json', import.meta.url));

export function readDashboard(): Dashboard {
  return JSON.parse(readFileSync(DASHBOARD_FILE, 'utf8')) as Dashboard;
}

/** Every panel, those inside collapsed rows too. */
export function dashboardPanels(d: Dashboard): DashboardPanel[] {
  return d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

/** Every query of the dashboard: each panel's targets, and each query variable's label_values() as a PromQL query. */
export function dashboardQueries(d: Dashboard): { where: string; expr: string }[] {
  const queries = dashboardPanels(d).flatMap((p) => (p.targets ?? []).map((t) => ({ where: `panel "${p.title}" (${t.refId})`, expr: t.expr })));
  for (const v of d.templating.list.filter((v) => v.type === 'query')) {
    const q = typeof v.query === 'string' ? v.query : (v.query?.query ?? '');
    const m = /^label_values\((\w+),\s*(\w+)\)$/.exec(q);
    assert.ok(m, `variable ${v.name}: ${q} is not label_values(metric, label)`);
    queries.push({ where: `variable $${v.name}`, expr: `group by (${m[2]}) (${m[1]})` });
  }
  return queries;
}

/**
 * A panel's query as Prometheus takes it: Grafana's interval variables become fixed windows
 * (`$__rate_interval` 30s: the test scrapes every second) and the dashboard's own variables
 * match everything. A `$` left over is a variable the dashboard does not define.
 */
export function promQL(expr: string, d: Dashboard): string {
  let q = expr.replaceAll('$__rate_interval', '30s').replaceAll('$__interval', '5s').replaceAll('$__range', '5m');
  for (const v of d.templating.list) {
    for (const form of [`\${${v.name}:regex}`, `\${${v.name}}`, `[[${v.name}]]`, `$${v.name}`]) q = q.replaceAll(form, v.allValue ?? '.*');
  }
  assert.ok(!q.includes('$'), `${expr}: a variable the dashboard does not define`);
  return q;
}

/** The metric names a query reads (our series and the process ones), for a check of each on its own. */
export function metricNames(expr: string): string[] {
  return [...new Set(expr.match(/\b(?:pretrain|process|nodejs)_[a-z0-9_]+\b/g) ?? [])];
}
