/**
 * The dashboard's HTML and CSS. No inline script or style (the server's Content-Security-Policy
 * allows only its own files): the page loads uPlot, then app.js (compiled from client/app.ts).
 */

const CHARTS: readonly [id: string, title: string][] = [
  ['loss', 'Loss'],
  ['lr', 'Learning rate'],
  ['tokens', 'Tokens/s: total and per worker'],
  ['steptime', 'Step time (s): p50, p95 over the last 100 steps; spread across ranks'],
  ['reduce', 'All-reduce share of the step (%)'],
  ['world', 'World size over time'],
];

const TILES: readonly [id: string, title: string][] = [
  ['step', 'Step'],
  ['loss', 'Loss'],
  ['tokens', 'Tokens/s'],
  ['steptime', 'Step p50 / p95'],
  ['reduce', 'All-reduce share'],
  ['world', 'World size'],
  ['epoch', 'Epoch'],
  ['checkpoint', 'Last checkpoint'],
];

export function mainPage(): string {
  const tiles = TILES.map(([id, title]) => `      <div class="tile"><div class="tile-title">${title}</div><div class="tile-value" id="tile-${id}">–</div>${id === 'epoch' ? '<div class="bar"><div class="bar-fill" id="epoch-bar"></div></div>' : `<div class="tile-sub" id="tile-${id}-sub"></div>`}</div>`).join('\n');
  const charts = CHARTS.map(([id, title]) => `      <section class="panel"><h2>${title}</h2><div class="chart" id="chart-${id}" data-points="0"></div></section>`).join('\n');
  return `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>tfjs-pretrain dashboard</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="/vendor/uPlot.min.css">
  <link rel="stylesheet" href="/style.css">
</head>
<body>
  <header>
    <h1>tfjs-pretrain <span id="run-id"></span></h1>
    <span class="pill" id="run-status">connecting</span>
    <span class="pill" id="connection" data-state="connecting">connecting</span>
  </header>
  <main>
    <div class="tiles">
${tiles}
    </div>
    <div class="charts">
${charts}
    </div>
    <div class="lower">
      <section class="panel">
        <h2>Workers</h2>
        <table id="workers">
          <thead><tr><th>rank</th><th>id</th><th>name</th><th>host</th><th>backend</th><th>state</th><th>last heartbeat</th></tr></thead>
          <tbody></tbody>
        </table>
      </section>
      <section class="panel">
        <h2>Events</h2>
        <ol id="events" reversed></ol>
      </section>
    </div>
  </main>
  <script src="/vendor/uPlot.iife.min.js"></script>
  <script type="module" src="/app.js"></script>
</body>
</html>
`;
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Asks for the run's token (a form that POSTs it to /login, which sets a session cookie). */
export function loginPage(problem?: string): string {
  return `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>tfjs-pretrain dashboard: token</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="/style.css">
</head>
<body class="login">
  <form method="post" action="/login">
    <h1>tfjs-pretrain dashboard</h1>
    <p>This dashboard needs the run's join token (<code>&lt;run-dir&gt;/join-token</code>, or the Secret the workers mount).</p>
    ${problem ? `<p class="problem">${escapeHtml(problem)}</p>` : ''}
    <input type="password" name="token" autocomplete="off" autofocus required placeholder="token">
    <button type="submit">Open</button>
  </form>
</body>
</html>
`;
}

export const STYLE = `
:root { --fg: #1d2330; --muted: #687086; --line: #e3e6ee; --bg: #f5f6fa; --panel: #fff; --accent: #2f6fde; --bad: #c93838; --ok: #23884a; --warn: #b7791f; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: center; gap: 12px; padding: 10px 18px; background: var(--panel); border-bottom: 1px solid var(--line); }
h1 { font-size: 17px; margin: 0; font-weight: 600; }
h1 span { color: var(--muted); font-weight: 400; margin-left: 6px; }
h2 { font-size: 13px; margin: 0 0 6px; font-weight: 600; color: var(--muted); }
main { padding: 14px 18px; }
.pill { font-size: 12px; padding: 2px 9px; border-radius: 10px; background: var(--line); color: var(--fg); }
.pill[data-state="training"], .pill[data-state="open"] { background: #dff3e6; color: var(--ok); }
.pill[data-state="failed"], .pill[data-state="closed"] { background: #f8dede; color: var(--bad); }
.pill[data-state="ended"] { background: #e2e9f9; color: var(--accent); }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; margin-bottom: 12px; }
.tile { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
.tile-title { font-size: 12px; color: var(--muted); }
.tile-sub { font-size: 12px; color: var(--muted); min-height: 17px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.tile-value { font-size: 19px; font-weight: 600; font-variant-numeric: tabular-nums; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.bar { height: 5px; background: var(--line); border-radius: 3px; margin: 6px 0; overflow: hidden; }
.bar-fill { height: 100%; width: 0; background: var(--accent); }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 12px; }
.panel { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; min-width: 0; }
.chart { min-height: 200px; }
.lower { display: grid; grid-template-columns: 3fr 2fr; gap: 12px; margin-top: 12px; }
@media (max-width: 1000px) { .lower { grid-template-columns: 1fr; } }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
td.state { font-weight: 600; }
tr[data-state="member"] td.state { color: var(--ok); }
tr[data-state="joining"] td.state, tr[data-state="waiting"] td.state { color: var(--warn); }
tr[data-state="dropped"] td.state { color: var(--bad); }
tr[data-state="dropped"], tr[data-state="left"], tr[data-state="refused"] { color: var(--muted); }
#events { margin: 0; padding: 0; list-style: none; max-height: 320px; overflow-y: auto; font-size: 13px; }
#events li { padding: 3px 0; border-bottom: 1px solid var(--line); display: flex; gap: 8px; }
#events time { color: var(--muted); font-variant-numeric: tabular-nums; flex: none; }
#events .kind { flex: none; width: 82px; font-size: 11px; text-transform: uppercase; letter-spacing: .03em; color: var(--muted); padding-top: 1px; }
#events li[data-kind="drop"] .kind, #events li[data-kind="abort"] .kind { color: var(--bad); }
#events li[data-kind="join"] .kind { color: var(--ok); }
#events li[data-kind="checkpoint"] .kind { color: var(--accent); }
body.login { display: flex; align-items: center; justify-content: center; min-height: 100vh; }
body.login form { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 22px 26px; width: 380px; display: flex; flex-direction: column; gap: 10px; }
body.login input, body.login button { font: inherit; padding: 6px 8px; }
.problem { color: var(--bad); margin: 0; }
`;
