/**
 * The data plane's own HTTP/2 (src/comm/h2) against itself and against node:http2 (nghttp2)
 * on real sockets: direct reads into a message's destination, flow control toward a peer
 * with the default 64 KiB windows, padding, CONTINUATION, small frames, and hostile bytes.
 */
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import v8 from 'node:v8';
import vm from 'node:vm';
import { describe, it, type TestContext } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { loadTls, type TlsMaterial } from '../src/comm/auth.js';
import { RpcError } from '../src/comm/errors.js';
import { makePki } from './fixtures/pki.js';
import { encodeHeaders } from '../src/comm/h2/hpack.js';
import type { H2Stream, HeaderList } from '../src/comm/h2/session.js';
import { connect, frameMessage, GrpcServer, ROUTE_HEAD_BYTES, ServerCall, startCall, type CallHandlers, type ClientSession } from '../src/comm/wire.js';
import { lcg } from './helpers.js';

const HEAD = 40; // bytes of each test message before its payload

/** Raw HTTP/2 for the tests that play a peer byte by byte. */
const preface = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
function frame(type: number, flags: number, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(id, 5);
  return Buffer.concat([h, payload]);
}

/** A message: HEAD bytes of `head`, then the payload. */
function message(head: number, payload: Uint8Array): Buffer {
  return Buffer.concat([Buffer.alloc(HEAD, head), payload]);
}

function randomBytes(seed: number, n: number): Uint8Array {
  const next = lcg(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(next() * 256));
}

async function ourServer(t: TestContext, onStream: (stream: H2Stream, headers: HeaderList) => void, tls?: TlsMaterial): Promise<string> {
  const server = await GrpcServer.listen('127.0.0.1', 0, tls, onStream);
  t.after(() => server.close());
  return `127.0.0.1:${server.port}`;
}

/** Serves each request with `messages`, then status OK and a trailer. */
function serve(messages: readonly Uint8Array[], trailer = 'done'): (stream: H2Stream) => void {
  return (stream) => {
    const call = new ServerCall(stream);
    call.readRequest(
      1024,
      () => {
        for (const m of messages) call.write([frameMessage(m)]);
        call.finish(0, '', { 'comm-test': trailer });
      },
      (e) => call.finish(e.code, e.message),
    );
  };
}

interface Received {
  messages: Buffer[];
  routed: Buffer[];
  /** Every message whole, in arrival order (routed ones put back together). */
  whole: Buffer[];
  error: RpcError | Error | null;
}

/** One call; messages longer than the route head are routed into fresh buffers in three pieces when `route` is set. */
function call(session: ClientSession, route: boolean): Promise<Received> {
  return new Promise((resolve) => {
    const got: Received = { messages: [], routed: [], whole: [], error: null };
    const handlers: CallHandlers = {
      onMessage: (m) => {
        got.messages.push(Buffer.from(m));
        got.whole.push(Buffer.from(m));
      },
      onEnd: (error) => {
        got.error = error;
        resolve(got);
      },
    };
    if (route) {
      handlers.route = (head, bytes) => {
        assert.ok(head.subarray(0, HEAD).every((b) => b === head[0]), 'the route sees the message head');
        const payload = Buffer.alloc(bytes - HEAD);
        const start = Buffer.from(head.subarray(0, HEAD));
        const third = Math.floor(payload.length / 3);
        return { headBytes: HEAD, targets: [payload.subarray(0, third), payload.subarray(third, 2 * third), payload.subarray(2 * third)], complete: () => {
            got.routed.push(payload);
            got.whole.push(Buffer.concat([start, payload]));
          },
        };
      };
    }
    startCall(session, '/test.Service/Get', Buffer.from('request'), {}, 8 << 20, 20_000, handlers);
  });
}

describe('HTTP/2 data plane (src/comm/h2)', () => {
  it('reads large payloads straight into their destination; small messages and heads go through staging', async (t) => {
    const payloads = [randomBytes(1, 3 << 20), randomBytes(2, 1 << 20), randomBytes(3, 5)];
    const address = await ourServer(t, serve(payloads.map((p, i) => message(i, p))));
    const session = connect(address, undefined);
    t.after(() => session.destroy());
    const got = await call(session, true);
    assert.equal(got.error, null);
    // the 5-byte payload's message is under the route head: it arrives whole
    assert.deepEqual(got.routed.map((b) => b.length), [3 << 20, 1 << 20]);
    assert.ok(got.routed[0]!.equals(payloads[0]!) && got.routed[1]!.equals(payloads[1]!), 'routed payloads differ');
    assert.deepEqual(got.messages, [message(2, payloads[2]!)]);
    const total = (4 << 20) + 2 * HEAD;
    assert.ok(session.directBytes >= 0.95 * total, `only ${session.directBytes} of ${total} bytes were read in place`);
    // the same session serves a second call, unrouted: every message assembled whole
    const again = await call(session, false);
    assert.equal(again.error, null);
    assert.deepEqual(again.messages.map((m) => m.length), payloads.map((p) => p.length + HEAD));
    assert.ok(again.messages[0]!.subarray(HEAD).equals(payloads[0]!));
  });

  it('over mutual TLS too, large payloads are decrypted straight into their destination', async (t) => {
    const dir = mkdtempSync(path.join(tmpdir(), 'comm-h2-tls-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const material = loadTls(makePki(dir, 'h2'))!;
    const payloads = [randomBytes(11, 2 << 20), randomBytes(12, 300_000)];
    const address = await ourServer(t, serve(payloads.map((p, i) => message(i, p))), material);
    const session = connect(address, material);
    t.after(() => session.destroy());
    const got = await call(session, true);
    assert.equal(got.error, null, String(got.error));
    got.whole.forEach((m, i) => assert.ok(m.equals(message(i, payloads[i]!)), `message ${i} differs`));
    const total = payloads.reduce((n, p) => n + p.length, 0);
    assert.ok(session.directBytes >= 0.9 * total, `only ${session.directBytes} of ${total} bytes were read in place`);
  });

  it('our client reads a node:http2 server that pads every frame, sends 16 KiB frames and a trailer block split by CONTINUATION', async (t) => {
    const payloads = [randomBytes(4, 300_000), randomBytes(5, 100), randomBytes(6, ROUTE_HEAD_BYTES - HEAD + 1)];
    const bigTrailer = 'x'.repeat(40_000); // over one 16 KiB frame
    const server = http2.createServer({ paddingStrategy: http2.constants.PADDING_STRATEGY_MAX });
    server.on('stream', (stream) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc+proto' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0', 'comm-big': bigTrailer }));
      for (const [i, p] of payloads.entries()) stream.write(frameMessage(message(i, p)));
      stream.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const session = connect(`127.0.0.1:${(server.address() as net.AddressInfo).port}`, undefined);
    // node:http2's close waits for its sessions to end: ours first
    t.after(() => {
      session.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    });
    for (const route of [true, false]) {
      const got = await call(session, route);
      assert.equal(got.error, null, String(got.error));
      const whole = got.whole;
      assert.deepEqual(whole.map((m) => m.length), payloads.map((p) => p.length + HEAD));
      whole.forEach((m, i) => assert.ok(m.equals(message(i, payloads[i]!)), `message ${i} differs (route ${route})`));
      if (route) assert.equal(got.routed.length, 2, 'both long messages were routed');
    }
  });

  it('our server respects a node:http2 client\'s default 64 KiB windows and small frames', async (t) => {
    const payload = randomBytes(7, 3 << 20);
    const address = await ourServer(t, serve([payload], 'flow'));
    const client = http2.connect(`http://${address}`);
    t.after(() => client.close());
    const req = client.request({ ':method': 'POST', ':path': '/test.Service/Get', 'content-type': 'application/grpc' });
    req.end(frameMessage(Buffer.from('request')));
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    const trailers = await new Promise<http2.IncomingHttpHeaders>((resolve, reject) => {
      req.on('trailers', resolve);
      req.on('error', reject);
    });
    await new Promise((resolve) => req.on('close', resolve));
    assert.equal(trailers['grpc-status'], '0');
    assert.equal(trailers['comm-test'], 'flow');
    const body = Buffer.concat(chunks);
    assert.equal(body.readUInt32BE(1), payload.length);
    assert.ok(body.subarray(5).equals(payload));
  });

  it('a peer that does not speak HTTP/2, or breaks its framing, is cut off; the server goes on serving', async (t) => {
    const address = await ourServer(t, serve([Buffer.from('ok')]));
    const [host, port] = address.split(':');
    const cutOff = (bytes: Buffer): Promise<Buffer> =>
      new Promise((resolve) => {
        const socket = net.connect(Number(port), host!, () => socket.write(bytes));
        const got: Buffer[] = [];
        socket.on('data', (b) => got.push(b));
        socket.on('error', () => {});
        socket.on('close', () => resolve(Buffer.concat(got)));
        setTimeout(() => socket.destroy(), 5000).unref();
      });
    const http1 = await cutOff(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    assert.ok(http1.length < 200, 'an HTTP/1 client gets at most our SETTINGS before the cut');
    // a HEADERS frame announcing 1 MiB: header blocks are held in memory, so they are capped
    const huge = Buffer.from([0x10, 0, 0, 0x1, 0x4, 0, 0, 0, 1]);
    const reply = await cutOff(Buffer.concat([preface, huge]));
    assert.ok(reply.includes(Buffer.from('a frame of type 1 of 1048576 bytes is over 65536')), `the GOAWAY names the problem: ${reply.toString('latin1')}`);
    const session = connect(address, undefined);
    t.after(() => session.destroy());
    const got = await call(session, false);
    assert.equal(got.error, null);
    assert.deepEqual(got.messages, [Buffer.from('ok')]);
  });

  it('a client that opens streams and never ends them gets at most 256; a stream answered early is reset, so it does not count', async (t) => {
    const block = encodeHeaders([[':method', 'POST'], [':scheme', 'http'], [':path', '/test.Service/Get'], [':authority', 'x'], ['content-type', 'application/grpc']]);
    /** The RST_STREAM codes the server sent, by stream, after `streams` HEADERS frames without END_STREAM. */
    /** Waits until `expected` resets came (at most 5 s), then 200 ms more in case others follow. */
    const resets = async (address: string, streams: number, expected: number): Promise<Map<number, number>> => {
      const [host, port] = address.split(':');
      const socket = net.connect(Number(port), host!);
      t.after(() => socket.destroy());
      const frames = [preface, frame(0x4, 0, 0, Buffer.alloc(0))];
      for (let i = 0; i < streams; i++) frames.push(frame(0x1, 0x4, 2 * i + 1, block)); // END_HEADERS only
      socket.write(Buffer.concat(frames));
      const got: Buffer[] = [];
      socket.on('data', (b) => got.push(b));
      const parse = (): Map<number, number> => {
        const out = new Map<number, number>();
        const bytes = Buffer.concat(got);
        for (let at = 0; at + 9 <= bytes.length; ) {
          const length = bytes.readUIntBE(at, 3);
          if (bytes[at + 3] === 0x3 && at + 13 <= bytes.length) out.set(bytes.readUInt32BE(at + 5) & 0x7fffffff, bytes.readUInt32BE(at + 9));
          at += 9 + length;
        }
        return out;
      };
      const deadline = Date.now() + 5000;
      while (parse().size < expected && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      await new Promise((resolve) => setTimeout(resolve, 200));
      return parse();
    };
    // a server that waits for each request: the first 256 streams stay open, the rest are refused (REFUSED_STREAM = 7)
    const waiting = await resets(await ourServer(t, serve([Buffer.from('ok')])), 300, 44);
    assert.deepEqual([...waiting.keys()], Array.from({ length: 44 }, (_, i) => 2 * (256 + i) + 1));
    assert.ok([...waiting.values()].every((code) => code === 7));
    // a server that answers at once (as an unauthenticated call is): each stream is reset with NO_ERROR after its status
    const answering = await resets(await ourServer(t, (stream) => new ServerCall(stream).finish(16, 'no token')), 300, 300);
    assert.equal(answering.size, 300);
    assert.ok([...answering.values()].every((code) => code === 0), 'none was refused');
  });

  it('a header block split into endless empty CONTINUATION frames does not grow the server\'s memory', async (t) => {
    const address = await ourServer(t, serve([Buffer.from('ok')]));
    const [host, port] = address.split(':');
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const socket = net.connect(Number(port), host!);
    t.after(() => socket.destroy());
    const got: Buffer[] = [];
    socket.on('data', (b) => got.push(b));
    socket.write(Buffer.concat([preface, frame(0x4, 0, 0), frame(0x1, 0, 1, encodeHeaders([[':method', 'POST']]))])); // HEADERS without END_HEADERS
    gc();
    const before = process.memoryUsage().heapUsed;
    const batch = Buffer.concat(Array<Buffer>(100_000).fill(frame(0x9, 0, 1))); // empty CONTINUATION frames
    for (let i = 0; i < 10; i++) await new Promise((resolve) => socket.write(batch, resolve));
    await new Promise((resolve) => setTimeout(resolve, 300)); // the server (this process) reads them
    gc();
    const grown = process.memoryUsage().heapUsed - before;
    // the block ends; a PING after it is answered: the session survived
    socket.write(Buffer.concat([frame(0x9, 0x4, 1, encodeHeaders([[':path', '/x']])), frame(0x6, 0, 0, Buffer.alloc(8, 7))]));
    const pingAck = frame(0x6, 0x1, 0, Buffer.alloc(8, 7));
    const deadline = Date.now() + 10_000;
    while (!Buffer.concat(got).includes(pingAck) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    assert.ok(Buffer.concat(got).includes(pingAck), 'no PING acknowledgement within 10 s: the session did not survive');
    // kept as one object per frame until the block ended, a million empty fragments held some 200 MB
    assert.ok(grown < 20e6, `the heap grew by ${(grown / 1e6).toFixed(0)} MB over 9 MB of empty CONTINUATION frames`);
  });

  it('a request that ends with a trailing HEADERS frame (END_STREAM there, not on DATA) is answered', async (t) => {
    const address = await ourServer(t, serve([Buffer.from('ok')]));
    const [host, port] = address.split(':');
    const socket = net.connect(Number(port), host!);
    t.after(() => socket.destroy());
    const got: Buffer[] = [];
    socket.on('data', (b) => got.push(b));
    const request = encodeHeaders([[':method', 'POST'], [':scheme', 'http'], [':path', '/test.Service/Get'], [':authority', 'x'], ['content-type', 'application/grpc']]);
    socket.write(Buffer.concat([preface, frame(0x4, 0, 0), frame(0x1, 0x4, 1, request), frame(0x0, 0, 1, frameMessage(Buffer.from('request'))), frame(0x1, 0x5, 1, encodeHeaders([['x-trailer', '1']]))]));
    /** The flags of the frames of `type` on stream 1 so far. */
    const flagsOf = (type: number): number[] => {
      const bytes = Buffer.concat(got);
      const out: number[] = [];
      for (let at = 0; at + 9 <= bytes.length; at += 9 + bytes.readUIntBE(at, 3)) if (bytes[at + 3] === type && bytes.readUInt32BE(at + 5) === 1) out.push(bytes[at + 4]!);
      return out;
    };
    const deadline = Date.now() + 3000;
    while (!flagsOf(0x1).some((f) => (f & 0x1) !== 0) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    assert.ok(flagsOf(0x1).some((f) => (f & 0x1) !== 0), 'no response trailers (END_STREAM) within 3 s');
  });

  it('a cancelled call\'s route targets are not written after its onEnd (a read into them was pending: the connection closes)', async (t) => {
    let peer: net.Socket | undefined;
    const server = net.createServer((socket) => {
      peer = socket;
      socket.on('error', () => {});
      socket.on('data', () => {});
      socket.write(frame(0x4, 0, 0));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const session = connect(`127.0.0.1:${(server.address() as net.AddressInfo).port}`, undefined);
    t.after(() => {
      session.destroy();
      server.close();
    });
    const target = Buffer.alloc(1 << 20);
    let ended = false;
    const c = startCall(session, '/test.Service/Get', Buffer.from('request'), {}, 4 << 20, 20_000, {
      onMessage: () => {},
      onEnd: () => (ended = true),
      route: (_head, bytes) => ({ headBytes: 0, targets: [target.subarray(0, bytes)], complete: () => {} }),
    });
    for (const deadline = Date.now() + 5000; !peer && Date.now() < deadline; ) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.ok(peer, 'the client did not connect within 5 s');
    const response = Buffer.concat([frame(0x1, 0x4, 1, encodeHeaders([[':status', '200'], ['content-type', 'application/grpc']])), frame(0x0, 0, 1, frameMessage(Buffer.alloc(1 << 20, 0xab)))]);
    peer.write(response.subarray(0, 300_000));
    await new Promise((resolve) => setTimeout(resolve, 100));
    c.cancel();
    assert.ok(ended);
    const snapshot = Buffer.from(target);
    peer.write(response.subarray(300_000));
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.ok(target.equals(snapshot), 'bytes landed in the target after the call ended');
  });
});

