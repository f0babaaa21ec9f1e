/**
 * The gRPC wire protocol (HTTP/2 framing, length-prefixed messages, status trailers) on
 * node:http2, for the data plane. Why not grpc-js: in grpc-js 1.14 only a client can raise
 * its HTTP/2 receive window, and its per-message path cost about 40% of the throughput of
 * the same framing on node:http2 when two ranks pull from each other (README, "Collective
 * communication"). This module speaks plain gRPC, so stock gRPC clients and servers
 * interoperate with it (tests/comm-interop.test.ts).
 */
import http2 from 'node:http2';
import type { TlsMaterial } from './auth.js';
import { RpcError, Status } from './errors.js';

/** HTTP/2 receive window (stream and connection) that both sides advertise: the bulk path's speed limit. */
export const FLOW_CONTROL_WINDOW = 32 << 20;
/** Largest request a server reads: requests are a few dozen bytes. */
export const MAX_REQUEST_BYTES = 16 << 10;

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

/**
 * Splits a gRPC byte stream into messages. Each message is assembled in one reusable buffer
 * at offset 0 (so a payload the sender aligned to 4 bytes can be viewed as floats); the
 * view handed to `onMessage` is valid only during the call.
 */
export class MessageReader {
  readonly #prefix = Buffer.alloc(5);
  #prefixFill = 0;
  #message: Buffer = Buffer.allocUnsafeSlow(0);
  #need = -1;
  #fill = 0;

  constructor(
    readonly maxMessageBytes: number,
    readonly onMessage: (message: Buffer) => void,
    /** A fixed buffer of at least maxMessageBytes to assemble in (ChunkAdder's memory); else one that grows. */
    assembly?: Buffer,
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

  push(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.#need < 0) {
        const take = Math.min(5 - this.#prefixFill, chunk.length - at);
        chunk.copy(this.#prefix, this.#prefixFill, at, at + take);
        this.#prefixFill += take;
        at += take;
        if (this.#prefixFill < 5) return;
        this.#prefixFill = 0;
        if (this.#prefix[0] !== 0) throw new FramingError(Status.INTERNAL, 'received a compressed message, but no message compression was negotiated');
        const length = this.#prefix.readUInt32BE(1);
        if (length > this.maxMessageBytes) throw new FramingError(Status.RESOURCE_EXHAUSTED, `received a message of ${length} bytes, over the limit of ${this.maxMessageBytes}`);
        if (this.#message.length < length) this.#message = Buffer.allocUnsafeSlow(Math.max(length, Math.min(2 * this.#message.length, this.maxMessageBytes)));
        this.#need = length;
        this.#fill = 0;
      }
      const take = Math.min(this.#need - this.#fill, chunk.length - at);
      chunk.copy(this.#message, this.#fill, at, at + take);
      this.#fill += take;
      at += take;
      if (this.#fill === this.#need) {
        const length = this.#need;
        this.#need = -1;
        this.onMessage(this.#message.subarray(0, length));
      }
    }
  }
}

export type Authority = { host: string; port: number };

export function parseAddress(address: string): Authority {
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(address);
  if (!m || Number(m[2]) > 65535) throw new Error(`peer address '${address}' is not host:port`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

/** HTTP/2 settings both our clients and servers use: the large receive window is the point. */
export const SESSION_SETTINGS: http2.Settings = { initialWindowSize: FLOW_CONTROL_WINDOW, enablePush: false };

/** Opens a client session; TLS when `tls` is given (peers must present certificates signed by its CA). */
export function connect(address: string, tls: TlsMaterial | undefined): http2.ClientHttp2Session {
  const { host, port } = parseAddress(address);
  const h = host.includes(':') ? `[${host}]` : host;
  const options: http2.SecureClientSessionOptions = { settings: SESSION_SETTINGS, maxSessionMemory: 1024 };
  const session = tls ? http2.connect(`https://${h}:${port}`, { ...options, ca: tls.ca, cert: tls.cert, key: tls.key }) : http2.connect(`http://${h}:${port}`, options);
  session.once('connect', () => session.setLocalWindowSize(FLOW_CONTROL_WINDOW));
  // errors reach the calls through their streams; an unhandled 'error' would crash the process
  session.on('error', () => {});
  return session;
}

export interface CallHandlers {
  /** Each response message (a view valid during the call). Throw to cancel the call. */
  onMessage(message: Buffer): void;
  /** Exactly once: null for status OK, else the failure. */
  onEnd(error: RpcError | Error | null, partial: boolean): void;
}

export interface Call {
  cancel(): void;
}

/** Starts a call: one request message, a stream of response messages, then a status. */
export function startCall(
  session: http2.ClientHttp2Session,
  path: string,
  request: Uint8Array,
  metadata: Record<string, string>,
  maxMessageBytes: number,
  timeoutMs: number,
  handlers: CallHandlers,
  assembly?: Buffer,
): Call {
  let ended = false;
  const end = (error: RpcError | Error | null, partial = false): void => {
    if (ended) return;
    ended = true;
    handlers.onEnd(error, partial);
  };
  let stream: http2.ClientHttp2Stream;
  try {
    stream = session.request(
      { ':method': 'POST', ':path': path, 'content-type': 'application/grpc+proto', te: 'trailers', 'grpc-timeout': `${Math.max(1, Math.ceil(timeoutMs))}m`, ...metadata },
      { endStream: false },
    );
  } catch (e) {
    end(e as Error);
    return { cancel: () => {} };
  }
  const reader = new MessageReader(maxMessageBytes, handlers.onMessage, assembly);
  let statusHeaders: http2.IncomingHttpHeaders | undefined;
  const finishWith = (h: http2.IncomingHttpHeaders): void => {
    const code = Number(h['grpc-status']);
    const message = decodeGrpcMessage(String(h['grpc-message'] ?? ''));
    const trailers: Record<string, string> = {};
    for (const [k, v] of Object.entries(h)) if (k.startsWith('comm-') && typeof v === 'string') trailers[k] = v;
    if (!Number.isInteger(code)) end(new RpcError(Status.INTERNAL, 'the response ended without a grpc-status'));
    else if (code !== Status.OK) end(new RpcError(code, message, trailers));
    else if (reader.partial) end(new RpcError(Status.INTERNAL, 'the stream ended in the middle of a message'), true);
    else end(null);
  };
  stream.on('response', (headers) => {
    const status = headers[':status'];
    if (status !== 200) return end(new RpcError(Status.UNKNOWN, `HTTP status ${status} (not a gRPC server?)`));
    const type = String(headers['content-type'] ?? '');
    if (!type.startsWith('application/grpc')) return end(new RpcError(Status.UNKNOWN, `content-type '${type}' is not gRPC`));
    if (headers['grpc-status'] !== undefined) statusHeaders = headers; // trailers-only response
  });
  stream.on('data', (chunk: Buffer) => {
    if (ended) return;
    try {
      reader.push(chunk);
    } catch (e) {
      end(e instanceof FramingError ? new RpcError(e.code, e.message) : (e as Error));
      stream.close(http2.constants.NGHTTP2_CANCEL);
    }
  });
  stream.on('trailers', (trailers) => (statusHeaders = trailers));
  stream.on('error', (e) => end(e));
  stream.on('close', () => {
    if (statusHeaders) finishWith(statusHeaders);
    else end(new RpcError(Status.UNAVAILABLE, `the stream closed without a status (HTTP/2 code ${stream.rstCode})`));
  });
  stream.end(frameMessage(request));
  return {
    cancel: () => {
      end(new RpcError(Status.CANCELLED, 'cancelled'));
      if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL);
    },
  };
}

/** Unary call: resolves with the one response message or rejects with RpcError/transport error. */
export function unaryCall(session: http2.ClientHttp2Session, path: string, request: Uint8Array, metadata: Record<string, string>, timeoutMs: number): Promise<Buffer> {
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

/** The server side of one call. */
export class ServerCall {
  #started = false;
  #status: { code: number; message: string; trailers: Record<string, string> } | undefined;

  constructor(readonly stream: http2.ServerHttp2Stream) {
    stream.on('wantTrailers', () => {
      const s = this.#status ?? { code: Status.OK, message: '', trailers: {} };
      stream.sendTrailers({ 'grpc-status': String(s.code), 'grpc-message': encodeGrpcMessage(s.message), ...s.trailers });
    });
    stream.on('error', () => {}); // a reset by the peer surfaces as 'close'
  }

  get open(): boolean {
    return !this.stream.closed && !this.stream.destroyed;
  }

  /** Sends the response headers (before the first message). */
  start(): void {
    if (this.#started || !this.open) return;
    this.#started = true;
    this.stream.respond({ ':status': 200, 'content-type': 'application/grpc+proto' }, { waitForTrailers: true });
  }

  /** Ends the call with a status; before any message this is a trailers-only response. */
  finish(code: number, message = '', trailers: Record<string, string> = {}): void {
    if (!this.open || this.#status) return;
    if (!this.#started) {
      this.#status = { code, message, trailers };
      this.stream.respond({ ':status': 200, 'content-type': 'application/grpc+proto', 'grpc-status': String(code), 'grpc-message': encodeGrpcMessage(message), ...trailers }, { endStream: true });
      return;
    }
    this.#status = { code, message, trailers };
    this.stream.end();
    if (code !== Status.OK) {
      // a peer that stopped reading never lets the queued data drain: reset after a grace period
      setTimeout(() => {
        if (this.open) this.stream.close(http2.constants.NGHTTP2_CANCEL);
      }, 500).unref();
    }
  }
}

/** Reads the one request message of a call, within the size limit. */
export function readRequest(stream: http2.ServerHttp2Stream, maxBytes: number, onRequest: (message: Buffer) => void, onError: (e: FramingError) => void): void {
  let got: Buffer | undefined;
  let failed = false;
  const reader = new MessageReader(maxBytes, (m) => {
    if (got) throw new FramingError(Status.INVALID_ARGUMENT, 'expected one request message, got more');
    got = Buffer.from(m);
  });
  stream.on('data', (chunk: Buffer) => {
    if (failed) return;
    try {
      reader.push(chunk);
    } catch (e) {
      failed = true;
      onError(e instanceof FramingError ? e : new FramingError(Status.INTERNAL, (e as Error).message));
    }
  });
  stream.on('end', () => {
    if (failed) return;
    if (!got || reader.partial) onError(new FramingError(Status.INVALID_ARGUMENT, 'the request message is missing or cut short'));
    else onRequest(got);
  });
}

export function createHttp2Server(tls: TlsMaterial | undefined): http2.Http2Server | http2.Http2SecureServer {
  const options = { settings: SESSION_SETTINGS, maxSessionMemory: 1024 };
  return tls ? http2.createSecureServer({ ...options, ca: tls.ca, cert: tls.cert, key: tls.key, requestCert: true, rejectUnauthorized: true, allowHTTP1: false }) : http2.createServer(options);
}
