/**
 * One HTTP/2 connection (RFC 9113) of the data plane, client or server side, over a TCP or
 * TLS socket: the subset gRPC uses (no server push, no priorities), with flow control on
 * both sides and any peer's framing accepted (padding, CONTINUATION, small frames).
 *
 * Why not node:http2: it hands every received DATA frame to JavaScript as a new buffer
 * through a Readable stream, and that path cost more CPU per byte than the whole ring
 * all-reduce of gloo (README, "Collective communication"). Here a client (TCP or TLS) reads
 * with `onread`: while a DATA frame's payload is due and the stream knows where it belongs
 * (a collective's destination), the socket reads straight into that place, so a received
 * float is copied once, by the kernel. Everything else goes through one reused staging
 * buffer. A sender writes whole messages as single DATA frames when the peer allows it.
 */
import net from 'node:net';
import tls from 'node:tls';
import { DEFAULT_MAX_FRAME, DEFAULT_WINDOW, Flag, FRAME_HEADER_BYTES, FrameType, frame, frameHeader, H2Code, H2ProtocolError, MAX_FRAME_LIMIT, MAX_WINDOW, PREFACE, Setting, settingsPayload, u32 } from './frames.js';
import { encodeHeaders, HeaderDecoder, type HeaderList } from './hpack.js';

export type { HeaderList } from './hpack.js';

/** What one stream's owner is told. Every method may be called from inside the socket's read. */
export interface StreamHandler {
  onHeaders(headers: HeaderList, endStream: boolean): void;
  /** Payload bytes of DATA frames, in order; the view is valid only during the call. */
  onData(bytes: Uint8Array): void;
  /** Where up to `max` of the next payload bytes may be read straight into (clients; servers read requests through staging), or undefined. */
  directTarget?(max: number): Uint8Array | undefined;
  /** `bytes` payload bytes were read straight into the view directTarget returned last. */
  onDirect?(bytes: number): void;
  /** The peer ended its side: on a DATA frame, or on a trailing header block (after its onHeaders). */
  onEnd?(): void;
  /** Exactly once: both sides ended (error undefined), or a reset or the connection's loss. */
  onClose(error: Error | undefined): void;
}

export interface SessionOptions {
  /** Receive window per stream and for the connection (bytes). */
  readonly window: number;
  /** Largest frame the peer may send us. */
  readonly maxFrameBytes: number;
  readonly maxHeaderListBytes: number;
  /**
   * While the peer sends large DATA frames, reads that are not straight into a destination
   * take only this much where a frame starts: its header and the head of the message it
   * carries, so that the payload after them is read in place rather than copied from staging.
   */
  readonly headReadBytes: number;
  /** Server side: a new stream from the peer; set `stream.handler` before returning. */
  readonly onStream?: (stream: H2Stream, headers: HeaderList, endStream: boolean) => void;
}

/** The 32 MiB receive windows (stream and connection) are the bulk path's speed limit. */
export const DEFAULT_SESSION_OPTIONS: SessionOptions = { window: 32 << 20, maxFrameBytes: MAX_FRAME_LIMIT, maxHeaderListBytes: 64 << 10, headReadBytes: 4096 };

/** A stream closed by the peer's RST_STREAM (or ours). */
export class StreamResetError extends Error {
  override name = 'StreamResetError';
  constructor(readonly code: number) {
    super(`the stream was reset (HTTP/2 code ${code})`);
  }
}

const EMPTY = Buffer.alloc(0);
const IGNORE: StreamHandler = { onHeaders() {}, onData() {}, onClose() {} };
const STAGING_BYTES = 256 << 10;
/** Direct reads smaller than this go through the staging buffer: a syscall per small read costs more than the copy. */
const MIN_DIRECT = 16 << 10;
const MAX_CONTROL_PAYLOAD = 64 << 10;
/** Streams a client may have open on a server at once (advertised; more are refused). */
const MAX_PEER_STREAMS = 256;
/**
 * Bytes queued for a socket that does not take them, at most: more means the peer stopped
 * reading while frames it provokes (PING, SETTINGS acknowledgements) pile up.
 */
const MAX_UNSENT_BYTES = 256 << 20;
const LARGE_FRAME = 4 * MIN_DIRECT;

/** The frame being received: `left` payload bytes are still to come. */
interface FrameState {
  readonly type: number;
  readonly flags: number;
  readonly streamId: number;
  readonly length: number;
  left: number;
}

interface Pending {
  readonly pieces: readonly Uint8Array[];
  piece: number;
  offset: number;
  readonly callback: ((error?: Error) => void) | undefined;
}

/** One stream of a session: its flow-control windows, its ends, and the DATA waiting for window. */
export class H2Stream {
  handler: StreamHandler = IGNORE;
  /** Bytes the peer may still receive from us on this stream. */
  sendWindow: number;
  /** Bytes we may still receive before we must grant more. */
  recvWindow: number;
  recvUnacked = 0;
  localEnded = false;
  remoteEnded = false;
  closed = false;
  readonly queue: Pending[] = [];
  /** A header block to send once the queue has drained (trailers), with END_STREAM. */
  pendingTrailers: Buffer | undefined;

  constructor(
    readonly session: H2Session,
    readonly id: number,
    sendWindow: number,
    recvWindow: number,
  ) {
    this.sendWindow = sendWindow;
    this.recvWindow = recvWindow;
  }

  /** Sends a header block; `endStream` ends our side. */
  sendHeaders(headers: ReadonlyArray<readonly [string, string]>, endStream: boolean, secret?: ReadonlySet<string>): void {
    if (this.closed || this.localEnded) return;
    this.session.sendHeaderBlock(this, encodeHeaders(headers, secret), endStream);
  }

  /** Queues DATA; `callback` runs once its last byte is handed to the kernel (or with the error that prevents it). */
  write(pieces: readonly Uint8Array[], callback?: (error?: Error) => void): void {
    if (this.closed || this.localEnded || this.pendingTrailers) {
      if (callback) queueMicrotask(() => callback(new Error('the stream is closed')));
      return;
    }
    this.queue.push({ pieces, piece: 0, offset: 0, callback });
    this.session.flush();
  }

  /** Ends our side with trailers after the queued DATA (or at once with an empty DATA frame when none are given). */
  end(trailers?: ReadonlyArray<readonly [string, string]>): void {
    if (this.closed || this.localEnded || this.pendingTrailers) return;
    this.pendingTrailers = trailers ? encodeHeaders(trailers) : Buffer.alloc(0);
    this.session.flush();
  }

  /** Drops DATA not yet framed (its callbacks get `error`): a peer that stopped reading must not hold the trailers back. */
  dropQueued(error: Error): void {
    for (const p of this.queue.splice(0)) if (p.callback) queueMicrotask(() => p.callback!(error));
  }

  reset(code: number = H2Code.CANCEL): void {
    if (this.closed) return;
    this.session.resetStream(this, code);
  }
}

export class H2Session {
  readonly role: 'client' | 'server';
  readonly options: SessionOptions;
  readonly #streams = new Map<number, H2Stream>();
  readonly #decoder: HeaderDecoder;
  #socket: net.Socket | undefined;
  #nextStreamId: number;
  #lastPeerStreamId = 0;
  // send side: what the peer allows
  #sendConnWindow = DEFAULT_WINDOW;
  #peerInitialWindow = DEFAULT_WINDOW;
  #peerMaxFrame = DEFAULT_MAX_FRAME;
  // receive side: what we granted
  #recvConnWindow = DEFAULT_WINDOW;
  #recvConnUnacked = 0;
  // the parser
  #prefaceLeft: number;
  readonly #header = Buffer.alloc(FRAME_HEADER_BYTES);
  #headerFill = 0;
  #frame: FrameState | undefined;
  #control: Buffer | undefined;
  #controlFill = 0;
  /** DATA frame state: pad length byte still due, data bytes left, padding bytes left. */
  #padPending = false;
  #dataLeft = 0;
  #padLeft = 0;
  /** A header block being received: `data` holds its first `bytes` bytes (one buffer, however many frames brought them). */
  #block: { streamId: number; endStream: boolean; data: Buffer; bytes: number } | undefined;
  // reading with onread
  readonly #staging: Buffer | undefined;
  #handed: Uint8Array | undefined;
  #handedStream: H2Stream | undefined;
  /** The last DATA frame was large: expect the next to be too (see headReadBytes). */
  #largeFrames = false;
  #directBytes = 0;
  #closing = false;
  #closed = false;
  #error: Error | undefined;
  readonly #closeListeners: ((error: Error | undefined) => void)[] = [];

  private constructor(role: 'client' | 'server', options: SessionOptions) {
    this.role = role;
    this.options = options;
    this.#nextStreamId = role === 'client' ? 1 : 2;
    this.#prefaceLeft = role === 'server' ? PREFACE.length : 0;
    this.#decoder = new HeaderDecoder(options.maxHeaderListBytes);
    // only clients read with onread (servers take requests from 'data' events)
    this.#staging = role === 'client' ? Buffer.allocUnsafeSlow(STAGING_BYTES) : undefined;
    if (options.maxFrameBytes < DEFAULT_MAX_FRAME || options.maxFrameBytes > MAX_FRAME_LIMIT) throw new Error(`maxFrameBytes ${options.maxFrameBytes} is not in ${DEFAULT_MAX_FRAME}..${MAX_FRAME_LIMIT}`);
    if (options.window < DEFAULT_WINDOW || options.window > MAX_WINDOW) throw new Error(`window ${options.window} is not in ${DEFAULT_WINDOW}..${MAX_WINDOW}`);
  }

  /** A client session to host:port, over TLS when `secure` is given (ALPN h2). */
  static connect(host: string, port: number, secure: tls.ConnectionOptions | undefined, options: SessionOptions = DEFAULT_SESSION_OPTIONS): H2Session {
    const session = new H2Session('client', options);
    // the socket reads into the buffer the session names (TLS decrypts into it)
    const onread = {
      buffer: () => session.#nextReadBuffer(),
      callback: (n: number, buf: Uint8Array) => {
        session.#onRead(n, buf);
        return true;
      },
    };
    // noDelay: with Nagle on, a request's second and third small writes wait for the server's delayed ACK (about 40 ms a call)
    // tls.connect hands `onread` to its socket (lib/_tls_wrap.js) though @types/node leaves it out
    const socket = secure ? tls.connect({ ...secure, host, port, ALPNProtocols: ['h2'], onread } as tls.ConnectionOptions) : net.connect({ host, port, noDelay: true, onread });
    if (secure) socket.setNoDelay(true);
    session.#attach(socket);
    session.#write([PREFACE, ...session.#openingFrames()]);
    return session;
  }

  /** The server side of an accepted (and, with TLS, handshaken) socket. */
  static accept(socket: net.Socket, options: SessionOptions): H2Session {
    const session = new H2Session('server', options);
    socket.setNoDelay(true);
    socket.on('data', (b: Buffer) => session.#receive(b));
    session.#attach(socket);
    session.#write(session.#openingFrames());
    return session;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** DATA payload bytes the socket read straight into their destination (the rest went through the staging buffer). */
  get directBytes(): number {
    return this.#directBytes;
  }

  get socket(): net.Socket | undefined {
    return this.#socket;
  }

  onClose(listener: (error: Error | undefined) => void): void {
    if (this.#closed) queueMicrotask(() => listener(this.#error));
    else this.#closeListeners.push(listener);
  }

  /** Runs `fn` with the socket corked: what it writes leaves in one write (a request's HEADERS and DATA, for one). */
  corked<T>(fn: () => T): T {
    const socket = this.#socket;
    socket?.cork();
    try {
      return fn();
    } finally {
      socket?.uncork();
    }
  }

  /** Opens a stream (client side) with a header block. */
  request(headers: ReadonlyArray<readonly [string, string]>, handler: StreamHandler, secret?: ReadonlySet<string>): H2Stream {
    if (this.role !== 'client') throw new Error('only a client session opens streams');
    const stream = new H2Stream(this, this.#nextStreamId, this.#peerInitialWindow, this.options.window);
    this.#nextStreamId += 2;
    stream.handler = handler;
    if (this.#closed || this.#closing) {
      stream.closed = true;
      const error = this.#error ?? new Error('the HTTP/2 session is closed');
      queueMicrotask(() => handler.onClose(error));
      return stream;
    }
    this.#streams.set(stream.id, stream);
    stream.sendHeaders(headers, false, secret);
    return stream;
  }

  /** Ends the session gracefully: GOAWAY, then the socket is ended; open streams fail. */
  close(): void {
    if (this.#closed || this.#closing) return;
    this.#closing = true;
    const goaway = Buffer.concat([u32(this.#lastPeerStreamId), u32(H2Code.NO_ERROR)]);
    this.#socket?.end(frame(FrameType.GOAWAY, 0, 0, goaway));
    setTimeout(() => this.destroy(), 1000).unref();
  }

  destroy(error?: Error): void {
    if (this.#closed) return;
    this.#error ??= error;
    this.#socket?.destroy();
    this.#finish();
  }

  // ---- sending ----

  #openingFrames(): Buffer[] {
    const w = this.options.window;
    const settings = settingsPayload([
      [Setting.ENABLE_PUSH, 0],
      [Setting.INITIAL_WINDOW_SIZE, w],
      [Setting.MAX_FRAME_SIZE, this.options.maxFrameBytes],
      [Setting.MAX_HEADER_LIST_SIZE, this.options.maxHeaderListBytes],
      ...(this.role === 'server' ? [[Setting.MAX_CONCURRENT_STREAMS, MAX_PEER_STREAMS] as const] : []),
    ]);
    const out = [frame(FrameType.SETTINGS, 0, 0, settings)];
    // the connection window starts at 64 KiB whatever the settings say (RFC 9113 section 6.9.2)
    if (w > DEFAULT_WINDOW) out.push(frame(FrameType.WINDOW_UPDATE, 0, 0, u32(w - DEFAULT_WINDOW)));
    this.#recvConnWindow = w;
    return out;
  }

  #write(chunks: readonly Uint8Array[], callback?: (error?: Error | null) => void): void {
    const socket = this.#socket;
    if (!socket || socket.destroyed || this.#closed) {
      if (callback) queueMicrotask(() => callback(this.#error ?? new Error('the HTTP/2 session is closed')));
      return;
    }
    if (socket.writableLength > MAX_UNSENT_BYTES) {
      this.destroy(new Error(`the peer stopped reading: over ${MAX_UNSENT_BYTES >> 20} MiB are waiting to be sent to it`));
      if (callback) queueMicrotask(() => callback(this.#error));
      return;
    }
    socket.cork();
    chunks.forEach((c, i) => socket.write(c, i === chunks.length - 1 ? callback : undefined));
    socket.uncork();
  }

  /** @internal (H2Stream) */
  sendHeaderBlock(stream: H2Stream, block: Buffer, endStream: boolean): void {
    const max = this.#peerMaxFrame;
    const frames: Buffer[] = [];
    for (let at = 0, first = true; first || at < block.length; first = false) {
      const part = block.subarray(at, at + max);
      at += part.length;
      const last = at >= block.length;
      const flags = (last ? Flag.END_HEADERS : 0) | (first && endStream ? Flag.END_STREAM : 0);
      frames.push(frame(first ? FrameType.HEADERS : FrameType.CONTINUATION, flags, stream.id, part));
    }
    this.#write(frames);
    if (endStream) this.#endLocal(stream);
  }

  /** @internal (H2Stream) */
  resetStream(stream: H2Stream, code: number): void {
    if (this.#handedStream === stream && !this.#closed) {
      // the socket holds a view of this stream's destination for its next read, and onread
      // cannot take it back: only closing the connection keeps those bytes out of it
      this.#error ??= new Error(`stream ${stream.id} was reset while the socket was reading into its destination; the connection is closed with it`);
      return this.destroy();
    }
    this.#write([frame(FrameType.RST_STREAM, 0, stream.id, u32(code))]);
    this.#closeStream(stream, code === H2Code.NO_ERROR ? undefined : new StreamResetError(code));
  }

  /** @internal (H2Stream) Frames queued DATA as far as the windows allow, then due trailers. */
  flush(): void {
    if (this.#closed) return;
    for (const stream of this.#streams.values()) {
      while (stream.queue.length > 0 && this.#sendConnWindow > 0 && stream.sendWindow > 0) this.#sendFrame(stream);
      if (stream.queue.length === 0 && stream.pendingTrailers && !stream.localEnded) {
        const block = stream.pendingTrailers;
        if (block.length > 0) this.sendHeaderBlock(stream, block, true);
        else {
          this.#write([frame(FrameType.DATA, Flag.END_STREAM, stream.id)]);
          this.#endLocal(stream);
        }
      }
    }
  }

  #sendFrame(stream: H2Stream): void {
    const limit = Math.min(this.#peerMaxFrame, this.#sendConnWindow, stream.sendWindow);
    const parts: Uint8Array[] = [];
    const callbacks: ((error?: Error) => void)[] = [];
    let length = 0;
    while (stream.queue.length > 0 && length < limit) {
      const p = stream.queue[0]!;
      const piece = p.pieces[p.piece];
      if (!piece) {
        stream.queue.shift();
        if (p.callback) callbacks.push(p.callback);
        continue;
      }
      const take = Math.min(piece.length - p.offset, limit - length);
      if (take > 0) parts.push(take === piece.length ? piece : piece.subarray(p.offset, p.offset + take));
      length += take;
      p.offset += take;
      if (p.offset === piece.length) {
        p.piece++;
        p.offset = 0;
      }
    }
    // an entry whose last byte went into this frame completes with it
    while (stream.queue.length > 0 && stream.queue[0]!.piece === stream.queue[0]!.pieces.length) {
      const p = stream.queue.shift()!;
      if (p.callback) callbacks.push(p.callback);
    }
    this.#sendConnWindow -= length;
    stream.sendWindow -= length;
    const done = callbacks.length === 0 ? undefined : (error?: Error | null): void => callbacks.forEach((cb) => cb(error ?? undefined));
    this.#write([frameHeader(length, FrameType.DATA, 0, stream.id), ...parts], done);
  }

  #endLocal(stream: H2Stream): void {
    stream.localEnded = true;
    if (stream.remoteEnded) return this.#closeStream(stream, undefined);
    // a server whose response is complete asks the client to stop sending (RFC 9113 section
    // 8.1): a peer that never ends its requests must not keep streams open here
    if (this.role === 'server') this.resetStream(stream, H2Code.NO_ERROR);
  }

  // ---- receiving ----

  #attach(socket: net.Socket): void {
    this.#socket = socket;
    socket.on('error', (e) => (this.#error ??= e));
    socket.on('close', () => this.#finish());
  }

  #nextReadBuffer(): Uint8Array {
    const f = this.#frame;
    // small only where a frame header and a message head come next: the payload after them
    // is then read in place; inside a frame that is not read in place, read as much as there is
    this.#handed = this.#largeFrames && !f ? this.#staging!.subarray(0, this.options.headReadBytes) : this.#staging!;
    this.#handedStream = undefined;
    // in small frames a direct read would cost a syscall per frame: only large ones, or the rest of a large frame's
    if (f && f.type === FrameType.DATA && !this.#padPending && this.#dataLeft > 0 && (this.#largeFrames || this.#dataLeft >= MIN_DIRECT)) {
      const stream = this.#streams.get(f.streamId);
      const target = stream && !stream.closed ? stream.handler.directTarget?.(this.#dataLeft) : undefined;
      if (target && target.length > 0 && (this.#largeFrames || target.length >= MIN_DIRECT)) {
        this.#handed = target;
        this.#handedStream = stream;
      }
    }
    return this.#handed;
  }

  #onRead(n: number, buffer: Uint8Array): void {
    if (buffer !== this.#handed || !this.#handedStream) return this.#receive(this.#staging!.subarray(0, n));
    // straight into the stream's target: the bytes are DATA payload of the current frame
    const stream = this.#handedStream;
    this.#directBytes += n;
    this.#dataLeft -= n;
    this.#frame!.left -= n;
    try {
      this.#consumed(stream, n);
      if (!stream.closed) stream.handler.onDirect?.(n);
      if (this.#frame!.left === 0) this.#endFrame();
    } catch (e) {
      // nothing may escape into the socket's read callback: it would end the process
      this.#protocolError(e instanceof H2ProtocolError ? e : new H2ProtocolError(H2Code.INTERNAL_ERROR, (e as Error).message));
    }
  }

  #receive(bytes: Uint8Array): void {
    try {
      this.#parse(bytes);
    } catch (e) {
      this.#protocolError(e instanceof H2ProtocolError ? e : new H2ProtocolError(H2Code.INTERNAL_ERROR, (e as Error).message));
    }
  }

  #parse(bytes: Uint8Array): void {
    let at = 0;
    if (this.#prefaceLeft > 0) {
      const take = Math.min(this.#prefaceLeft, bytes.length);
      const start = PREFACE.length - this.#prefaceLeft;
      if (!PREFACE.subarray(start, start + take).equals(bytes.subarray(0, take))) throw new H2ProtocolError(H2Code.PROTOCOL_ERROR, 'the connection did not start with the HTTP/2 preface (not an HTTP/2 client?)');
      this.#prefaceLeft -= take;
      at = take;
    }
    while (at < bytes.length && !this.#closed) {
      const f = this.#frame;
      if (!f) {
        const take = Math.min(FRAME_HEADER_BYTES - this.#headerFill, bytes.length - at);
        this.#header.set(bytes.subarray(at, at + take), this.#headerFill);
        this.#headerFill += take;
        at += take;
        if (this.#headerFill === FRAME_HEADER_BYTES) {
          this.#headerFill = 0;
          this.#startFrame();
        }
        continue;
      }
      at += f.type === FrameType.DATA ? this.#dataBytes(f, bytes, at) : this.#controlBytes(f, bytes, at);
      if (f.left === 0) this.#endFrame();
    }
  }

  #startFrame(): void {
    const h = this.#header;
    const length = h.readUIntBE(0, 3);
    const type = h[3]!;
    const flags = h[4]!;
    const streamId = h.readUInt32BE(5) & 0x7fffffff;
    if (length > this.options.maxFrameBytes) throw new H2ProtocolError(H2Code.FRAME_SIZE_ERROR, `a frame of ${length} bytes is over the ${this.options.maxFrameBytes} we allow`);
    if (this.#block && type !== FrameType.CONTINUATION) throw new H2ProtocolError(H2Code.PROTOCOL_ERROR, 'a header block was interrupted by another frame');
    this.#frame = { type, flags, streamId, length, left: length };
    if (type === FrameType.DATA) {
      this.#largeFrames = length >= LARGE_FRAME;
      if (streamId === 0) throw new H2ProtocolError(H2Code.PROTOCOL_ERROR, 'DATA on stream 0');
      this.#recvConnWindow -= length;
      if (this.#recvConnWindow < 0) throw new H2ProtocolError(H2Code.FLOW_CONTROL_ERROR, 'the peer sent more than the connection window');
      const stream = this.#streams.get(streamId);
      if (stream) {
        stream.recvWindow -= length;
        if (stream.recvWindow < 0) throw new H2ProtocolError(H2Code.FLOW_CONTROL_ERROR, `the peer sent more than stream ${streamId}'s window`);
      }
      this.#padPending = (flags & Flag.PADDED) !== 0;
      this.#dataLeft = this.#padPending ? 0 : length;
      this.#padLeft = 0;
      if (this.#padPending && length === 0) throw new H2ProtocolError(H2Code.PROTOCOL_ERROR, 'a padded DATA frame without its pad length');
    } else {
      const known = type <= FrameType.CONTINUATION;
      if (known && length > MAX_CONTROL_PAYLOAD) throw new H2ProtocolError(H2Code.FRAME_SIZE_ERROR, `a frame of type ${type} of ${length} bytes is over ${MAX_CONTROL_PAYLOAD}`);
      this.#control = known ? Buffer.allocUnsafe(length) : undefined;
      this.#controlFill = 0;
    }
    if (length === 0) this.#endFrame();
  }

  #dataBytes(f: FrameState, bytes: Uint8Array, at: number): number {
    let used = 0;
    if (this.#padPending) {
      this.#padLeft = bytes[at]!;
      this.#padPending = false;
      this.#dataLeft = f.length - 1 - this.#padLeft;
      if (this.#dataLeft < 0) throw new H2ProtocolError(H2Code.PROTOCOL_ERROR, 'DATA padding longer than the frame');
      used = 1;
    }
    const stream = this.#streams.get(f.streamId);
    const data = Math.min(this.#dataLeft, bytes.length - at - used);
    if (data > 0) {
      this.#dataLeft -= data;
      if (stream && !stream.closed && !stream.remoteEnded) stream.handler.onData(bytes.subarray(at + used, at + used + data));
      used += data;
    }
    const pad = Math.min(this.#padLeft, bytes.length - at - used);
    this.#padLeft -= pad;
    used += pad;
    f.left -= used;
    if (stream) this.#consumed(stream, used);
    else this.#consumedConnection(used);
    return used;
  }

  #controlBytes(f: FrameState, bytes: Uint8Array, at: number): number {
    const take = Math.min(f.left, bytes.length - at);
    if (this.#control) this.#control.set(bytes.subarray(at, at + take), this.#controlFill);
    this.#controlFill += take;
    f.left -= take;
    return take;
  }

  /** Grants the peer more window once half of it is used. */
  #consumed(stream: H2Stream, n: number): void {
    this.#consumedConnection(n);
    stream.recvUnacked += n;
    if (!stream.remoteEnded && !stream.closed && stream.recvUnacked >= this.options.window / 2) {
      this.#write([frame(FrameType.WINDOW_UPDATE, 0, stream.id, u32(stream.recvUnacked))]);
      stream.recvWindow += stream.recvUnacked;
      stream.recvUnacked = 0;
    }
  }

  #consumedConnection(n: number): void {
    this.#recvConnUnacked += n;
    if (this.#recvConnUnacked >= this.options.window / 2) {
      this.#write([frame(FrameType.WINDOW_UPDATE, 0, 0, u32(this.#recvConnUnacked))]);
      this.#recvConnWindow += this.#recvConnUnacked;
      this.#recvConnUnacked = 0;
    }
  }

  #endFrame(): void {
    const f = this.#frame!;
    this.#frame = undefined;
    const payload = this.#control ?? Buffer.alloc(0);
    this.#control = undefined;
    switch (f.type) {
      case FrameType.DATA: {
        const stream = this.#streams.get(f.streamId);
        if (stream && (f.flags & Flag.END_STREAM) !== 0) this.#remoteEnd(stream);
        return;
      }
      case FrameType.HEADERS:
        return this.#onHeadersFrame(f, payload);
      case FrameType.CONTINUATION: {
        const block = this.#block;
        if (!block || block.streamId !== f.streamId) throw new H2ProtocolError(H2Code.PROTOCOL_ERROR, 'CONTINUATION without a header block in progress');
        return this.#addToBlock(payload, (f.flags & Flag.END_HEADERS) !== 0);
      }
      case FrameType.SETTINGS:
        return this.#onSettings(f, payload);
      case FrameType.WINDOW_UPDATE:
        return this.#onWindowUpdate(f, payload);
      case FrameType.PING:
        if (payload.length !== 8) throw new H2ProtocolError(H2Code.FRAME_SIZE_ERROR, 'a PING frame is not 8 bytes');
        if ((f.flags & Flag.ACK) === 0) this.#write([frame(FrameType.PING, Flag.ACK, 0, payload)]);
        return;
      case FrameType.RST_STREAM: {
        if (payload.length !== 4) throw new H2ProtocolError(H2Code.FRAME_SIZE_ERROR, 'an RST_STREAM frame is not 4 bytes');
        const stream = this.#streams.get(f.streamId);
        const code = payload.readUInt32BE(0);
        if (stream) this.#closeStream(stream, new StreamResetError(code));
        return;
      }
      case FrameType.GOAWAY: {
        if (payload.length < 8) throw new H2ProtocolError(H2Code.FRAME_SIZE_ERROR, 'a GOAWAY frame under 8 bytes');
        const last = payload.readUInt32BE(0) & 0x7fffffff;
        const code = payload.readUInt32BE(4);
        const debug = payload.subarray(8).toString('utf8');
        this.#closing = true;
        for (const s of [...this.#streams.values()]) if (this.#ours(s.id) && s.id > last) this.#closeStream(s, new Error(`the peer is going away (HTTP/2 code ${code}${debug ? `: ${debug}` : ''}); the stream was not processed`));
        return;
      }
      case FrameType.PUSH_PROMISE:
        throw new H2ProtocolError(H2Code.PROTOCOL_ERROR, 'PUSH_PROMISE, though push is disabled');
      default:
        return; // PRIORITY and unknown types are ignored
    }
  }

  #ours(id: number): boolean {
    return (id % 2 === 1) === (this.role === 'client');
  }

  #onHeadersFrame(f: { flags: number; streamId: number }, payload: Buffer): void {
    if (f.streamId === 0) throw new H2ProtocolError(H2Code.PROTOCOL_ERROR, 'HEADERS on stream 0');
    let start = 0;
    let end = payload.length;
    if (f.flags & Flag.PADDED) {
      end -= payload[0] ?? 0;
      start = 1;
    }
    if (f.flags & Flag.PRIORITY) start += 5;
    if (start > end) throw new H2ProtocolError(H2Code.PROTOCOL_ERROR, 'HEADERS padding or priority longer than the frame');
    this.#block = { streamId: f.streamId, endStream: (f.flags & Flag.END_STREAM) !== 0, data: EMPTY, bytes: 0 };
    this.#addToBlock(payload.subarray(start, end), (f.flags & Flag.END_HEADERS) !== 0);
  }

  #addToBlock(fragment: Buffer, last: boolean): void {
    const block = this.#block!;
    const bytes = block.bytes + fragment.length;
    if (bytes > this.options.maxHeaderListBytes) throw new H2ProtocolError(H2Code.ENHANCE_YOUR_CALM, `a header block over ${this.options.maxHeaderListBytes} bytes`);
    // copied into one buffer, not kept as a list of fragments: a peer that sends endless empty
    // CONTINUATION frames must not grow this connection's memory (each fragment is an object)
    if (block.bytes === 0) block.data = fragment;
    else if (fragment.length > 0) {
      if (block.data.length < bytes) {
        const grown = Buffer.allocUnsafe(Math.min(Math.max(bytes, 2 * block.bytes), this.options.maxHeaderListBytes));
        block.data.copy(grown, 0, 0, block.bytes);
        block.data = grown;
      }
      fragment.copy(block.data, block.bytes);
    }
    block.bytes = bytes;
    if (!last) return;
    this.#block = undefined;
    // decoded even for a stream we no longer know: the dynamic table must stay in step
    const headers = this.#decoder.decode(block.data.subarray(0, block.bytes));
    let stream = this.#streams.get(block.streamId);
    if (!stream) {
      if (this.role !== 'server' || this.#ours(block.streamId) || block.streamId <= this.#lastPeerStreamId) return; // closed or reset: ignored
      if (this.#closing || this.#streams.size >= MAX_PEER_STREAMS) {
        this.#lastPeerStreamId = block.streamId;
        this.#write([frame(FrameType.RST_STREAM, 0, block.streamId, u32(H2Code.REFUSED_STREAM))]);
        return;
      }
      this.#lastPeerStreamId = block.streamId;
      stream = new H2Stream(this, block.streamId, this.#peerInitialWindow, this.options.window);
      this.#streams.set(stream.id, stream);
      if (block.endStream) stream.remoteEnded = true;
      this.options.onStream?.(stream, headers, block.endStream);
      return;
    }
    if (stream.closed || stream.remoteEnded) return;
    if (block.endStream) stream.remoteEnded = true;
    stream.handler.onHeaders(headers, block.endStream);
    if (block.endStream) this.#remoteEnd(stream);
  }

  #remoteEnd(stream: H2Stream): void {
    stream.remoteEnded = true;
    if (!stream.closed) stream.handler.onEnd?.();
    if (stream.localEnded) this.#closeStream(stream, undefined);
  }

  #onSettings(f: { flags: number; streamId: number }, payload: Buffer): void {
    if (f.streamId !== 0) throw new H2ProtocolError(H2Code.PROTOCOL_ERROR, 'SETTINGS on a stream');
    if (f.flags & Flag.ACK) return;
    if (payload.length % 6 !== 0) throw new H2ProtocolError(H2Code.FRAME_SIZE_ERROR, 'a SETTINGS frame is not a multiple of 6 bytes');
    for (let i = 0; i < payload.length; i += 6) {
      const id = payload.readUInt16BE(i);
      const value = payload.readUInt32BE(i + 2);
      if (id === Setting.INITIAL_WINDOW_SIZE) {
        if (value > MAX_WINDOW) throw new H2ProtocolError(H2Code.FLOW_CONTROL_ERROR, `initial window ${value} is over 2^31-1`);
        const delta = value - this.#peerInitialWindow;
        this.#peerInitialWindow = value;
        for (const s of this.#streams.values()) s.sendWindow += delta;
      } else if (id === Setting.MAX_FRAME_SIZE) {
        if (value < DEFAULT_MAX_FRAME || value > MAX_FRAME_LIMIT) throw new H2ProtocolError(H2Code.PROTOCOL_ERROR, `max frame size ${value} is out of range`);
        this.#peerMaxFrame = value;
      }
    }
    this.#write([frame(FrameType.SETTINGS, Flag.ACK, 0)]);
    this.flush();
  }

  #onWindowUpdate(f: { streamId: number }, payload: Buffer): void {
    if (payload.length !== 4) throw new H2ProtocolError(H2Code.FRAME_SIZE_ERROR, 'a WINDOW_UPDATE frame is not 4 bytes');
    const increment = payload.readUInt32BE(0) & 0x7fffffff;
    if (f.streamId === 0) {
      if (increment === 0) throw new H2ProtocolError(H2Code.PROTOCOL_ERROR, 'a connection WINDOW_UPDATE of 0');
      this.#sendConnWindow += increment;
      if (this.#sendConnWindow > MAX_WINDOW) throw new H2ProtocolError(H2Code.FLOW_CONTROL_ERROR, 'the connection window went over 2^31-1');
    } else {
      const stream = this.#streams.get(f.streamId);
      if (!stream) return;
      if (increment === 0 || stream.sendWindow + increment > MAX_WINDOW) return stream.reset(increment === 0 ? H2Code.PROTOCOL_ERROR : H2Code.FLOW_CONTROL_ERROR);
      stream.sendWindow += increment;
    }
    this.flush();
  }

  #closeStream(stream: H2Stream, error: Error | undefined): void {
    if (stream.closed) return;
    stream.closed = true;
    this.#streams.delete(stream.id);
    if (error) stream.dropQueued(error);
    stream.handler.onClose(error);
  }

  #protocolError(e: H2ProtocolError): void {
    if (this.#closed) return;
    this.#error ??= new Error(`HTTP/2 protocol error from the peer: ${e.message}`);
    const goaway = Buffer.concat([u32(this.#lastPeerStreamId), u32(e.code), Buffer.from(e.message.slice(0, 200), 'utf8')]);
    this.#socket?.end(frame(FrameType.GOAWAY, 0, 0, goaway));
    this.#finish();
    setTimeout(() => this.#socket?.destroy(), 200).unref();
  }

  #finish(): void {
    if (this.#closed) return;
    this.#closed = true;
    const error = this.#error ?? new Error('the HTTP/2 connection closed');
    for (const s of [...this.#streams.values()]) this.#closeStream(s, error);
    for (const l of this.#closeListeners.splice(0)) l(this.#error);
  }
}
