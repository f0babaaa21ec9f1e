/**
 * The gRPC wire protocol (length-prefixed messages, status trailers) on the data plane's own
 * HTTP/2 (./h2/session.ts). Why not grpc-js or node:http2: on the bulk path their per-frame
 * and per-message work cost more CPU per byte than gloo's whole all-reduce here (README,
 * "Collective communication"); ours lets a received payload be read by the kernel straight
 * into its destination. This module speaks plain gRPC, so stock gRPC clients and servers
 * interoperate with it (tests/comm-interop.test.ts).
 */
import net from 'node:net';
import tls from 'node:tls';
import type { TlsMaterial } from './auth.js';
import { RpcError, Status } from './errors.js';
import { FRAME_HEADER_BYTES } from './h2/frames.js';
import { H2Session, StreamResetError, type H2Stream, type HeaderList, type SessionOptions, type StreamHandler, DEFAULT_SESSION_OPTIONS } from './h2/session.js';

/** Largest request a server reads: requests are a few dozen bytes. */
export const MAX_REQUEST_BYTES = 16 << 10;
/** Bytes of a message's start a router sees before it decides where the rest goes. */
export const ROUTE_HEAD_BYTES = 256;

/** A frame header, the gRPC length prefix and the route head: the small read where a large frame starts. */
const SESSION_OPTIONS: SessionOptions = { ...DEFAULT_SESSION_OPTIONS, headReadBytes: FRAME_HEADER_BYTES + 5 + ROUTE_HEAD_BYTES };
/** grpc-message: percent-encode every byte outside printable ASCII, and '%' itself (gRPC HTTP/2 spec). */
export function encodeGrpcMessage(text: string): string {
  let out = '';
  for (const b of Buffer.from(text, 'utf8')) out += b >= 0x20 && b <= 0x7e && b !== 0x25 ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  return out;
}

export function decodeGrpcMessage(text: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const hex = text[i] === '%' ? text.slice(i + 1, i + 3) : '';
    if (/^[0-9a-fA-F]{2}$/.test(hex)) {
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else bytes.push(...Buffer.from(text[i]!, 'utf8'));
  }
  return Buffer.from(bytes).toString('utf8');
}

/** A length-prefixed message that breaks the framing rules or the size limit. */
export class FramingError extends Error {
  override name = 'FramingError';
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

/** Where the payload of one message goes, decided from its first bytes (see MessageReader). */
export interface MessageRoute {
  /** Message bytes before the payload. */
  readonly headBytes: number;
  /** The payload's destination, in order; their lengths add up to the payload's. */
  readonly targets: readonly Uint8Array[];
  /** The whole payload is in place. */
  complete(): void;
}

/**
 * Decides where a message's payload goes from its first min(ROUTE_HEAD_BYTES, length)
 * bytes; undefined: assemble it and hand it to onMessage as usual.
 */
export type Router = (head: Buffer, messageBytes: number) => MessageRoute | undefined;

/**
 * Splits a gRPC byte stream into messages. Each message is assembled in one reusable buffer
 * at offset 0 (so a payload the sender aligned to 4 bytes can be viewed as floats); the
 * view handed to `onMessage` is valid only during the call. With a router, a message longer
 * than ROUTE_HEAD_BYTES may instead be written piece by piece where the router says, and the
 * socket may read it there directly (directTarget/advance).
 */
export class MessageReader {
  readonly #prefix = Buffer.alloc(5);
  #prefixFill = 0;
  #message: Buffer = Buffer.allocUnsafeSlow(0);
  #need = -1;
  #fill = 0;
  readonly #head = Buffer.alloc(ROUTE_HEAD_BYTES);
  #route: MessageRoute | undefined;
  #target = 0;
  #targetFill = 0;

  constructor(
    readonly maxMessageBytes: number,
    readonly onMessage: (message: Buffer) => void,
    /** A fixed buffer of at least maxMessageBytes to assemble in (ChunkAdder's memory); else one that grows. */
    assembly?: Buffer,
    readonly router?: Router,
  ) {
    if (assembly) {
      if (assembly.length < maxMessageBytes) throw new Error('the assembly buffer is smaller than the message limit');
      this.#message = assembly;
    }
  }

  /** Bytes of a message started but not finished (a stream that ends here was cut short). */
  get partial(): boolean {
    return this.#prefixFill > 0 || this.#need >= 0;
  }

  push(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.#need < 0) {
        const take = Math.min(5 - this.#prefixFill, chunk.length - at);
        this.#prefix.set(chunk.subarray(at, at + take), this.#prefixFill);
        this.#prefixFill += take;
        at += take;
        if (this.#prefixFill < 5) return;
        this.#prefixFill = 0;
        if (this.#prefix[0] !== 0) throw new FramingError(Status.INTERNAL, 'received a compressed message, but no message compression was negotiated');
        const length = this.#prefix.readUInt32BE(1);
        if (length > this.maxMessageBytes) throw new FramingError(Status.RESOURCE_EXHAUSTED, `received a message of ${length} bytes, over the limit of ${this.maxMessageBytes}`);
        this.#need = length;
        this.#fill = 0;
        this.#route = undefined;
        if (length === 0) {
          this.#deliver();
          continue;
        }
      }
      if (this.#route) {
        at += this.#fillTargets(chunk.subarray(at));
        continue;
      }
      const routing = this.router !== undefined && this.#need > ROUTE_HEAD_BYTES && this.#fill < ROUTE_HEAD_BYTES;
      const into = routing ? this.#head : this.#assembly();
      const limit = routing ? ROUTE_HEAD_BYTES : this.#need;
      const take = Math.min(limit - this.#fill, chunk.length - at);
      into.set(chunk.subarray(at, at + take), this.#fill);
      this.#fill += take;
      at += take;
      if (routing && this.#fill === ROUTE_HEAD_BYTES) this.#decide();
      else if (this.#fill === this.#need) this.#deliver();
    }
  }

  /** Where the socket may read up to `max` next bytes straight into (a routed payload), or undefined. */
  directTarget(max: number): Uint8Array | undefined {
    const route = this.#route;
    if (!route || this.#need < 0) return undefined;
    const t = route.targets[this.#target]!;
    return t.subarray(this.#targetFill, this.#targetFill + Math.min(max, t.length - this.#targetFill));
  }

  /** `n` bytes were read into the view directTarget returned. */
  advance(n: number): void {
    this.#targetFill += n;
    this.#fill += n;
    this.#nextTarget();
  }

  #assembly(): Buffer {
    if (this.#message.length < this.#need) {
      const grown = Buffer.allocUnsafeSlow(Math.max(this.#need, Math.min(2 * this.#message.length, this.maxMessageBytes)));
      grown.set(this.#message.subarray(0, this.#fill));
      this.#message = grown;
    }
    return this.#message;
  }

  #decide(): void {
    const route = this.router!(this.#head, this.#need);
    if (!route) {
      this.#assembly().set(this.#head.subarray(0, this.#fill));
      return;
    }
    const payload = route.targets.reduce((n, t) => n + t.length, 0);
    if (route.headBytes > ROUTE_HEAD_BYTES || route.headBytes + payload !== this.#need) throw new FramingError(Status.INTERNAL, `a message of ${this.#need} bytes was routed as ${route.headBytes} + ${payload}`);
    this.#route = route;
    this.#target = 0;
    this.#targetFill = 0;
    this.#fill = route.headBytes;
    this.#nextTarget(); // skips empty targets; a message that was all head completes here
    if (this.#route) this.#fillTargets(this.#head.subarray(route.headBytes));
  }

  /** Copies bytes into the route's targets; returns how many it took. */
  #fillTargets(bytes: Uint8Array): number {
    let used = 0;
    while (used < bytes.length && this.#route) {
      const t = this.#route.targets[this.#target]!;
      const take = Math.min(t.length - this.#targetFill, bytes.length - used);
      t.set(bytes.subarray(used, used + take), this.#targetFill);
      used += take;
      this.advance(take);
    }
    return used;
  }

  #nextTarget(): void {
    const route = this.#route!;
    while (this.#target < route.targets.length && this.#targetFill === route.targets[this.#target]!.length) {
      this.#target++;
      this.#targetFill = 0;
    }
    if (this.#target === route.targets.length) {
      this.#route = undefined;
      this.#need = -1;
      route.complete();
    }
  }

  #deliver(): void {
    const length = this.#need;
    this.#need = -1;
    this.onMessage(this.#assembly().subarray(0, length));
  }
}

export type Authority = { host: string; port: number };

export function parseAddress(address: string): Authority {
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(address);
  if (!m || Number(m[2]) > 65535) throw new Error(`peer address '${address}' is not host:port`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

export type ClientSession = H2Session;

/** Opens a client session; TLS when `material` is given (peers must present certificates signed by its CA). */
export function connect(address: string, material: TlsMaterial | undefined): ClientSession {
  const { host, port } = parseAddress(address);
  return H2Session.connect(host, port, material ? { ca: material.ca, cert: material.cert, key: material.key } : undefined, SESSION_OPTIONS);
}

export interface CallHandlers {
  /** Each response message (a view valid during the call). Throw to cancel the call. */
  onMessage(message: Buffer): void;
  /** Exactly once: null for status OK, else the failure. */
  onEnd(error: RpcError | Error | null, partial: boolean): void;
  /** Optional: where long messages' payloads go (see MessageReader). Throw to cancel the call. */
  route?: Router;
}

export interface Call {
  cancel(): void;
}

/** grpc-timeout: at most 8 digits (gRPC over HTTP/2), in the finest unit that fits. */
export function grpcTimeout(ms: number): string {
  const value = Math.max(1, Math.ceil(ms));
  if (value <= 99_999_999) return `${value}m`;
  if (value / 1000 <= 99_999_999) return `${Math.ceil(value / 1000)}S`;
  return `${Math.min(99_999_999, Math.ceil(value / 3_600_000))}H`;
}

/** Headers of every call: pseudo headers first (HTTP/2 requires it). */
function requestHeaders(session: ClientSession, path: string, timeoutMs: number, metadata: Record<string, string>): [string, string][] {
  const authority = session.socket ? `${session.socket.remoteAddress ?? 'localhost'}:${session.socket.remotePort ?? 0}` : 'localhost';
  return [
    [':method', 'POST'],
    [':scheme', session.socket instanceof tls.TLSSocket ? 'https' : 'http'],
    [':path', path],
    [':authority', authority],
    ['content-type', 'application/grpc+proto'],
    ['te', 'trailers'],
    ['grpc-timeout', grpcTimeout(timeoutMs)],
    ...Object.entries(metadata).map(([k, v]) => [k.toLowerCase(), v] as [string, string]),
  ];
}

/** Starts a call: one request message, a stream of response messages, then a status. */
export function startCall(
  session: ClientSession,
  path: string,
  request: Uint8Array,
  metadata: Record<string, string>,
  maxMessageBytes: number,
  timeoutMs: number,
  handlers: CallHandlers,
  assembly?: Buffer,
): Call {
  let ended = false;
  let stream: H2Stream | undefined;
  const end = (error: RpcError | Error | null, partial = false): void => {
    if (ended) return;
    ended = true;
    handlers.onEnd(error, partial);
  };
  const fail = (e: unknown): void => {
    end(e instanceof FramingError ? new RpcError(e.code, e.message) : (e as Error));
    stream?.reset();
  };
  const reader = new MessageReader(maxMessageBytes, handlers.onMessage, assembly, handlers.route);
  let responded = false;
  const finishWith = (h: HeaderList): void => {
    const code = Number(h['grpc-status']);
    const message = decodeGrpcMessage(h['grpc-message'] ?? '');
    const trailers: Record<string, string> = {};
    for (const [k, v] of Object.entries(h)) if (k.startsWith('comm-')) trailers[k] = v;
    if (h['grpc-status'] === undefined || !Number.isInteger(code)) end(new RpcError(Status.INTERNAL, 'the response ended without a grpc-status'));
    else if (code !== Status.OK) end(new RpcError(code, message, trailers));
    else if (reader.partial) end(new RpcError(Status.INTERNAL, 'the stream ended in the middle of a message'), true);
    else end(null);
  };
  const handler: StreamHandler = {
    onHeaders: (headers, endStream) => {
      if (ended) return;
      if (!responded) {
        responded = true;
        const status = headers[':status'];
        if (status !== '200') return fail(new RpcError(Status.UNKNOWN, `HTTP status ${status} (not a gRPC server?)`));
        const type = headers['content-type'] ?? '';
        if (!type.startsWith('application/grpc')) return fail(new RpcError(Status.UNKNOWN, `content-type '${type}' is not gRPC`));
        if (headers['grpc-status'] !== undefined || endStream) finishWith(headers); // trailers-only response
        return;
      }
      finishWith(headers);
    },
    onData: (bytes) => {
      if (ended) return;
      try {
        reader.push(bytes);
      } catch (e) {
        fail(e);
      }
    },
    directTarget: (max) => (ended ? undefined : reader.directTarget(max)),
    onDirect: (n) => {
      if (ended) return;
      try {
        reader.advance(n);
      } catch (e) {
        fail(e);
      }
    },
    onEnd: () => end(new RpcError(Status.INTERNAL, 'the response ended without a grpc-status')),
    onClose: (error) => {
      if (error instanceof StreamResetError) end(new RpcError(Status.UNAVAILABLE, `the stream closed without a status (HTTP/2 code ${error.code})`));
      else if (error) end(error);
      else end(new RpcError(Status.INTERNAL, 'the response ended without a grpc-status'));
    },
  };
  // HEADERS, the request and END_STREAM in one write: small writes apart would wait on each other (Nagle)
  session.corked(() => {
    stream = session.request(requestHeaders(session, path, timeoutMs, metadata), handler, SECRET_HEADERS);
    stream.write([frameMessage(request)]);
    stream.end();
  });
  return {
    cancel: () => {
      end(new RpcError(Status.CANCELLED, 'cancelled'));
      stream?.reset();
    },
  };
}

/** Never put into a compression table along the way (HPACK never-indexed literals). */
const SECRET_HEADERS: ReadonlySet<string> = new Set(['authorization']);

/** Unary call: resolves with the one response message or rejects with RpcError/transport error. */
export function unaryCall(session: ClientSession, path: string, request: Uint8Array, metadata: Record<string, string>, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let reply: Buffer | undefined;
    let timer: NodeJS.Timeout | undefined; // declared first: a call can end before startCall returns
    let ended = false;
    const call = startCall(session, path, request, metadata, 1 << 16, timeoutMs, {
      onMessage: (m) => (reply = Buffer.from(m)),
      onEnd: (error) => {
        ended = true;
        clearTimeout(timer);
        if (error) reject(error);
        else if (!reply) reject(new RpcError(Status.INTERNAL, 'the unary call returned no message'));
        else resolve(reply);
      },
    });
    if (!ended) timer = setTimeout(() => call.cancel(), timeoutMs);
  });
}

export function frameMessage(message: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + message.length);
  out[0] = 0;
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

/** The server side of one call: reads its one request message, writes messages, ends with a status. */
export class ServerCall {
  #started = false;
  #finished = false;
  readonly #closeListeners: (() => void)[] = [];
  #onRequestData: ((bytes: Uint8Array) => void) | undefined;
  #onRequestEnd: (() => void) | undefined;

  constructor(readonly stream: H2Stream) {
    stream.handler = {
      onHeaders: () => {}, // request trailers: gRPC clients send none; their end comes as onEnd
      onData: (bytes) => this.#onRequestData?.(bytes),
      onEnd: () => this.#onRequestEnd?.(),
      onClose: () => {
        for (const l of this.#closeListeners.splice(0)) l();
      },
    };
  }

  get open(): boolean {
    return !this.stream.closed;
  }

  /** `listener` runs once when the stream closes: the call ended, the peer reset it or the connection was lost. */
  onClose(listener: () => void): void {
    if (this.stream.closed) queueMicrotask(listener);
    else this.#closeListeners.push(listener);
  }

  /** Sends the response headers (before the first message). */
  start(): void {
    if (this.#started || !this.open) return;
    this.#started = true;
    this.stream.sendHeaders([[':status', '200'], ['content-type', 'application/grpc+proto']], false);
  }

  /** Queues one message's bytes (`pieces` in order, the length prefix included); `callback` runs once they reach the kernel. */
  write(pieces: readonly Uint8Array[], callback?: (error?: Error) => void): void {
    this.start();
    this.stream.write(pieces, callback);
  }

  /** Ends the call with a status; before any message this is a trailers-only response. */
  finish(code: number, message = '', trailers: Record<string, string> = {}): void {
    if (!this.open || this.#finished) return;
    this.#finished = true;
    const status: [string, string][] = [['grpc-status', String(code)], ['grpc-message', encodeGrpcMessage(message.slice(0, 4000))], ...Object.entries(trailers)];
    if (!this.#started) {
      this.#started = true;
      this.stream.sendHeaders([[':status', '200'], ['content-type', 'application/grpc+proto'], ...status], true);
    } else {
      // a failed call's unsent messages are dropped: a peer that stopped reading must still get the status
      if (code !== Status.OK) this.stream.dropQueued(new Error(`the call ended with status ${code}`));
      this.stream.end(status);
    }
  }

  /** Reads the one request message of the call, within the size limit. */
  readRequest(maxBytes: number, onRequest: (message: Buffer) => void, onError: (e: FramingError) => void): void {
    let got: Buffer | undefined;
    let failed = false;
    const reader = new MessageReader(maxBytes, (m) => {
      if (got) throw new FramingError(Status.INVALID_ARGUMENT, 'expected one request message, got more');
      got = Buffer.from(m);
    });
    this.#onRequestData = (bytes) => {
      if (failed) return;
      try {
        reader.push(bytes);
      } catch (e) {
        failed = true;
        onError(e instanceof FramingError ? e : new FramingError(Status.INTERNAL, (e as Error).message));
      }
    };
    const done = (): void => {
      if (failed) return;
      if (!got || reader.partial) onError(new FramingError(Status.INVALID_ARGUMENT, 'the request message is missing or cut short'));
      else onRequest(got);
    };
    if (this.stream.remoteEnded) queueMicrotask(done);
    else this.#onRequestEnd = done;
  }
}

/** A listening HTTP/2 server of gRPC calls (cleartext, or mutual TLS when `material` is given). */
export class GrpcServer {
  readonly #server: net.Server;
  readonly #sessions = new Set<H2Session>();

  private constructor(server: net.Server) {
    this.#server = server;
  }

  static async listen(host: string, port: number, material: TlsMaterial | undefined, onStream: (stream: H2Stream, headers: HeaderList) => void): Promise<GrpcServer> {
    const options: SessionOptions = { ...SESSION_OPTIONS, onStream };
    let self: GrpcServer | undefined;
    const accept = (socket: net.Socket): void => {
      socket.on('error', () => {});
      if (!self || !self.#server.listening) return void socket.destroy();
      const session = H2Session.accept(socket, options);
      self.#sessions.add(session);
      session.onClose(() => self!.#sessions.delete(session));
    };
    const server = material
      ? tls.createServer({ ca: material.ca, cert: material.cert, key: material.key, requestCert: true, rejectUnauthorized: true, ALPNProtocols: ['h2'] }, (socket) => (socket.alpnProtocol === 'h2' ? accept(socket) : socket.destroy()))
      : net.createServer(accept);
    // a TLS handshake a peer fails (no or a foreign certificate) must not take the server down
    server.on('tlsClientError', () => {});
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    self = new GrpcServer(server);
    return self;
  }

  get port(): number {
    return (this.#server.address() as net.AddressInfo).port;
  }

  /** Stops listening; open sessions get GOAWAY and are cut after a second. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const s of this.#sessions) s.close();
    await closed;
  }
}
