/**
 * The live dashboard of a run, served by the coordinator: plain HTTP for the page and its
 * files (uPlot from the package's node_modules, no CDN), a WebSocket (`ws`) at /ws for the
 * data: a snapshot on connect, then each change (src/dashboard/protocol.ts). Read-only: the
 * server takes no command, and what a page sends on the socket is ignored.
 *
 * Access: on a loopback address (the default, 127.0.0.1) anyone on this machine may look,
 * and requests must name a loopback host (no DNS rebinding). On any other address every
 * request but the login form's needs the run's join token, checked in constant time
 * (JoinToken.matches): `Authorization: Bearer <token>`, or `?token=<token>` once (the page
 * then gets a session cookie and the token leaves the address bar), or the login form. The
 * WebSocket upgrade is checked the same way, and its Origin must be the page's.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { type WebSocket, WebSocketServer } from 'ws';
import type { JoinToken } from '../comm/auth.js';
import type { RunHistory } from './history.js';
import { loginPage, mainPage, STYLE } from './page.js';
import type { ServerMessage } from './protocol.js';

export class DashboardError extends Error {
  override name = 'DashboardError';
}

export interface DashboardOptions {
  readonly history: RunHistory;
  /** Default 127.0.0.1. Any other than a loopback address needs the token. */
  readonly host?: string | undefined;
  /** 0: any free port. */
  readonly port: number;
  /** The run's join token: required of every request when the host is not a loopback one. */
  readonly token?: JoinToken | undefined;
  /** How often the workers table (their heartbeats) is sent while pages are open. */
  readonly workersEveryMs?: number;
}

export interface Dashboard {
  /** Where to open it (the token is never in it). */
  readonly url: string;
  readonly address: AddressInfo;
  /** Whether requests need the token. */
  readonly tokenRequired: boolean;
  /** Pages connected now. */
  clients(): number;
  close(): Promise<void>;
}

const SESSION_COOKIE = 'pretrain_dashboard';
const MAX_SESSIONS = 256;
/** A page that falls this far behind is cut off (it reconnects and gets a snapshot). */
const MAX_BUFFERED = 16 << 20;

const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
};

export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127(\.\d{1,3}){3}$/.test(h);
}

interface Asset {
  readonly type: string;
  readonly body: Buffer;
}

/** The page's script (compiled from client/app.ts) and uPlot's files, read once. */
function loadAssets(): Map<string, Asset> {
  const require = createRequire(import.meta.url);
  const read = (file: string | URL, what: string): Buffer => {
    try {
      return readFileSync(file);
    } catch (e) {
      throw new DashboardError(`the dashboard's ${what} is missing from the installation (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
  };
  const resolve = (id: string): string => {
    try {
      return require.resolve(id);
    } catch {
      throw new DashboardError(`the dashboard needs ${id} (the uplot package): reinstall with npm ci`);
    }
  };
  // the compiled script names its source map, which is not served
  const app = read(new URL('./client/app.js', import.meta.url), 'script').toString('utf8').replace(/\n\/\/# sourceMappingURL=.*\s*$/, '\n');
  const js = 'text/javascript; charset=utf-8';
  const css = 'text/css; charset=utf-8';
  return new Map<string, Asset>([
    ['/app.js', { type: js, body: Buffer.from(app) }],
    ['/style.css', { type: css, body: Buffer.from(STYLE) }],
    ['/vendor/uPlot.iife.min.js', { type: js, body: read(resolve('uplot/dist/uPlot.iife.min.js'), 'chart library') }],
    ['/vendor/uPlot.min.css', { type: css, body: read(resolve('uplot/dist/uPlot.min.css'), 'chart library') }],
  ]);
}

function cookieValue(header: string | undefined, name: string): string | undefined {
  for (const part of (header ?? '').split(';')) {
    const at = part.indexOf('=');
    if (at > 0 && part.slice(0, at).trim() === name) return part.slice(at + 1).trim();
  }
  return undefined;
}

const digestOf = (value: string): string => createHash('sha256').update(value).digest('hex');

export async function startDashboard(o: DashboardOptions): Promise<Dashboard> {
  const host = o.host ?? '127.0.0.1';
  const tokenRequired = !isLoopback(host);
  if (tokenRequired && !o.token) throw new DashboardError(`a dashboard on ${host} (not a loopback address) needs the run's token`);
  const assets = loadAssets();
  const history = o.history;
  /** Digests of the session cookies handed out (a lookup by digest tells nothing of the value by its timing). */
  const sessions = new Set<string>();

  const newSession = (): string => {
    const id = randomBytes(32).toString('hex');
    sessions.add(digestOf(id));
    if (sessions.size > MAX_SESSIONS) sessions.delete(sessions.values().next().value!);
    return id;
  };
  const presentedToken = (req: IncomingMessage, url: URL): boolean => {
    const query = url.searchParams.get('token');
    return o.token!.matches(req.headers.authorization) || (query !== null && o.token!.matches(`Bearer ${query}`));
  };
  const authorized = (req: IncomingMessage, url: URL): boolean => {
    if (!tokenRequired) return true;
    const session = cookieValue(req.headers.cookie, SESSION_COOKIE);
    return (session !== undefined && sessions.has(digestOf(session))) || presentedToken(req, url);
  };
  /** On loopback (no token), a request must name a loopback host: a page elsewhere cannot rebind its name to it. */
  const hostAllowed = (req: IncomingMessage): boolean => {
    if (tokenRequired) return true;
    const name = /^(\[[^\]]*\]|[^:]*)(:\d+)?$/.exec(req.headers.host ?? '')?.[1];
    return name !== undefined && isLoopback(name);
  };

  const send = (res: ServerResponse, status: number, type: string, body: string | Buffer, headers: Record<string, string> = {}): void => {
    res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': type, 'content-length': String(Buffer.byteLength(body)), ...headers });
    res.end(res.req.method === 'HEAD' ? undefined : body);
  };
  const html = 'text/html; charset=utf-8';
  const sessionCookie = (): Record<string, string> => ({ 'set-cookie': `${SESSION_COOKIE}=${newSession()}; Path=/; HttpOnly; SameSite=Strict` });

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://dashboard');
    if (!hostAllowed(req)) return send(res, 421, 'text/plain; charset=utf-8', 'this dashboard answers to localhost and 127.0.0.1 only\n');
    if (req.method === 'POST' && url.pathname === '/login' && tokenRequired) return login(req, res);
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'text/plain; charset=utf-8', 'read-only: GET only\n', { allow: 'GET, HEAD' });
    if (url.pathname === '/style.css') return send(res, 200, assets.get('/style.css')!.type, assets.get('/style.css')!.body);
    if (!authorized(req, url)) return send(res, 401, html, loginPage(url.searchParams.has('token') ? 'That is not the run\'s token.' : undefined), { 'www-authenticate': 'Bearer realm="pretrain dashboard"' });
    // ?token= once: a session cookie instead, and the token out of the address bar
    if (tokenRequired && url.searchParams.has('token')) {
      url.searchParams.delete('token');
      return send(res, 303, 'text/plain; charset=utf-8', '', { ...sessionCookie(), location: `${url.pathname}${url.search}` });
    }
    if (url.pathname === '/') return send(res, 200, html, mainPage());
    if (url.pathname === '/api/snapshot') return send(res, 200, 'application/json; charset=utf-8', JSON.stringify(history.snapshot()));
    const asset = assets.get(url.pathname);
    if (asset) return send(res, 200, asset.type, asset.body, { 'cache-control': 'no-cache' });
    send(res, 404, 'text/plain; charset=utf-8', 'not found\n');
  };

  const login = (req: IncomingMessage, res: ServerResponse): void => {
    let body = '';
    let tooLong = false;
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => {
      body += chunk;
      if (body.length > 4096) {
        tooLong = true;
        req.destroy();
      }
    });
    req.on('end', () => {
      if (tooLong) return;
      const token = new URLSearchParams(body).get('token') ?? '';
      if (!o.token!.matches(`Bearer ${token}`)) return send(res, 401, html, loginPage('That is not the run\'s token.'));
      send(res, 303, 'text/plain; charset=utf-8', '', { ...sessionCookie(), location: '/' });
    });
  };

  const server: Server = createServer((req, res) => {
    try {
      handle(req, res);
    } catch {
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'internal error\n');
      else res.destroy();
    }
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;

  const wss = new WebSocketServer({ noServer: true, maxPayload: 4096 });
  const clients = new Set<WebSocket>();
  const broadcast = (m: ServerMessage): void => {
    if (clients.size === 0) return;
    const text = JSON.stringify(m);
    for (const ws of clients) {
      if (ws.bufferedAmount > MAX_BUFFERED) ws.terminate();
      else ws.send(text);
    }
  };
  const unsubscribe = history.subscribe(broadcast);

  const refuse = (socket: Duplex, status: number, reason: string): void => {
    socket.end(`HTTP/1.1 ${status} ${reason}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
  };
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    const url = new URL(req.url ?? '/', 'http://dashboard');
    if (url.pathname !== '/ws') return refuse(socket, 404, 'Not Found');
    if (!hostAllowed(req)) return refuse(socket, 421, 'Misdirected Request');
    // a page of another site may open a socket here: only the dashboard's own page is let in
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== `http://${req.headers.host ?? ''}`) return refuse(socket, 403, 'Forbidden');
    if (!authorized(req, url)) return refuse(socket, 401, 'Unauthorized');
    wss.handleUpgrade(req, socket, head, (ws) => {
      clients.add(ws);
      ws.on('close', () => clients.delete(ws));
      ws.on('error', () => ws.terminate());
      // read-only: whatever a page sends is ignored
      ws.on('message', () => undefined);
      ws.send(JSON.stringify(history.snapshot()));
    });
  });

  const ticker = setInterval(() => {
    if (clients.size > 0) broadcast(history.workersMessage());
  }, o.workersEveryMs ?? 1000);
  ticker.unref();

  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new DashboardError(`the dashboard cannot listen on ${host}:${o.port}: ${e.code ?? e.message}`)));
    server.listen(o.port, host, () => resolve());
  });
  const address = server.address() as AddressInfo;
  const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    url: `http://${shown}:${address.port}/`,
    address,
    tokenRequired,
    clients: () => clients.size,
    close: async () => {
      clearInterval(ticker);
      unsubscribe();
      for (const ws of clients) ws.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
