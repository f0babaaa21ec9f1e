/**
 * The same chunked, pipelined ring all-reduce as src/comm, over plain TCP sockets (node:net):
 * the transport ceiling the benchmark compares the gRPC data plane with. Same schedule, same
 * gRPC length-prefix framing of raw float32 payloads, same zero-copy writes, the same reads
 * straight into place (`onread`: all-gather chunks into the buffer, reduce-scatter chunks into
 * the SIMD adder's memory) and SIMD adds; no HTTP/2, no protobuf, no authentication, no fault
 * handling (a benchmark only). Each rank connects to its left neighbour and reads from that
 * connection; the left neighbour writes to the connection it accepted.
 */
import net from 'node:net';
import { allReduceSchedule } from '../src/comm/flat.js';
import { ChunkAdder, ReductionBuffer } from '../src/comm/simd-add.js';

/** Where the bytes of the collective in progress go, in order. */
interface Receiving {
  /** The target of the next chunk's payload, given its length in bytes. */
  target(bytes: number): Uint8Array;
  complete(): void;
}

export class TcpRing {
  readonly #server: net.Server;
  #toRight: Promise<net.Socket>;
  #fromLeft: net.Socket | undefined;
  readonly #adder: ChunkAdder;
  readonly #prefix = Buffer.alloc(5);
  #prefixFill = 0;
  #target: Uint8Array | undefined;
  #targetFill = 0;
  #receiving: Receiving | undefined;
  /** Bytes of the next collective that arrived before it started (read into the spill buffer). */
  readonly #spill = Buffer.alloc(64 << 10);
  #early: Buffer[] = [];
  #error: Error | undefined;

  private constructor(
    server: net.Server,
    readonly chunkElements: number,
  ) {
    this.#server = server;
    this.#adder = new ChunkAdder(chunkElements * 4, chunkElements);
    this.#toRight = new Promise((resolve) => server.once('connection', (s: net.Socket) => resolve(s)));
  }

  static async listen(host: string, chunkElements: number): Promise<TcpRing> {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, host, resolve));
    return new TcpRing(server, chunkElements);
  }

  get address(): string {
    const a = this.#server.address() as net.AddressInfo;
    return `${a.address}:${a.port}`;
  }

  /** Connects to the left neighbour (whose ring this rank reads). */
  async connect(left: string): Promise<void> {
    const [host, port] = left.split(':');
    this.#fromLeft = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ port: Number(port), host: host!, noDelay: true, onread: { buffer: () => this.#nextBuffer(), callback: (n, buf) => this.#onRead(n, buf) } }, () => resolve(s));
      s.once('error', reject);
    });
    (await this.#toRight).setNoDelay(true);
  }

  #nextBuffer(): Uint8Array {
    if (!this.#receiving) return this.#spill;
    if (this.#target) return this.#target.subarray(this.#targetFill);
    return this.#prefix.subarray(this.#prefixFill);
  }

  #onRead(n: number, buf: Uint8Array): boolean {
    try {
      if (buf === this.#spill) this.#consume(this.#spill.subarray(0, n));
      else if (this.#target) this.#advance(n);
      else this.#prefixBytes(n);
    } catch (e) {
      this.#error = e as Error;
    }
    return true;
  }

  /** Bytes read elsewhere (spill): copied where they belong, or kept for the next collective. */
  #consume(bytes: Uint8Array): void {
    let at = 0;
    while (at < bytes.length) {
      if (!this.#receiving) {
        this.#early.push(Buffer.from(bytes.subarray(at)));
        return;
      }
      const into = this.#target ? this.#target.subarray(this.#targetFill) : this.#prefix.subarray(this.#prefixFill);
      const take = Math.min(into.length, bytes.length - at);
      into.set(bytes.subarray(at, at + take));
      at += take;
      if (this.#target) this.#advance(take);
      else this.#prefixBytes(take);
    }
  }

  #prefixBytes(n: number): void {
    this.#prefixFill += n;
    if (this.#prefixFill < 5) return;
    this.#prefixFill = 0;
    this.#target = this.#receiving!.target(this.#prefix.readUInt32BE(1));
    this.#targetFill = 0;
  }

  #advance(n: number): void {
    this.#targetFill += n;
    if (this.#targetFill < this.#target!.length) return;
    this.#target = undefined;
    this.#receiving!.complete();
  }

  async allReduce(buf: Float32Array, n: number, p: number, maxInFlight = 32 << 20): Promise<void> {
    const { sends, sendAfter, receives } = allReduceSchedule(buf.length, n, p, this.chunkElements);
    const out = await this.#toRight;
    // a ReductionBuffer is added into in place, as the gRPC data plane does
    const rb = ReductionBuffer.holding([buf]);
    const landing = rb && rb.landing.length >= this.chunkElements * 4 ? rb : undefined;
    let received = 0;
    let sent = 0;
    let outstanding = 0;
    await new Promise<void>((resolve, reject) => {
      const done = (): void => {
        if (this.#error) reject(this.#error);
        if (received === receives.length && sent === sends.length && outstanding === 0) resolve();
      };
      const pump = (): void => {
        while (sent < sends.length && outstanding < maxInFlight && (sendAfter[sent]! < 0 || received > sendAfter[sent]!)) {
          const t = sends[sent++]!;
          const prefix = Buffer.allocUnsafe(5);
          prefix[0] = 0;
          prefix.writeUInt32BE(t.length * 4, 1);
          const bytes = t.length * 4 + 5;
          outstanding += bytes;
          out.cork();
          out.write(prefix);
          out.write(Buffer.from(buf.buffer, buf.byteOffset + t.offset * 4, t.length * 4), (e) => {
            if (e) return reject(e);
            outstanding -= bytes;
            pump();
            done();
          });
          out.uncork();
        }
      };
      this.#receiving = {
        target: (bytes) => {
          const t = receives[received]!;
          if (bytes !== t.length * 4) throw new Error(`chunk of ${bytes} bytes where ${t.length * 4} were due`);
          // reduce-scatter: into the adder's memory, then added; all-gather: in place
          if (t.step >= n - 1) return Buffer.from(buf.buffer, buf.byteOffset + t.offset * 4, bytes);
          return (landing ? landing.landing : this.#adder.assembly).subarray(0, bytes);
        },
        complete: () => {
          const t = receives[received++]!;
          // from here bytes belong to the next collective
          if (received === receives.length) this.#receiving = undefined;
          const dst = buf.subarray(t.offset, t.offset + t.length);
          if (t.step < n - 1 && landing) landing.addLanded(dst, 0);
          else if (t.step < n - 1) this.#adder.add(dst, new Float32Array(this.#adder.assembly.buffer, 0, t.length));
          pump();
          done();
        },
      };
      const early = this.#early;
      this.#early = [];
      for (const b of early) this.#consume(b);
      pump();
      done();
    });
  }

  close(): void {
    this.#fromLeft?.destroy();
    void this.#toRight.then((s) => s.destroy());
    this.#server.close();
  }
}
