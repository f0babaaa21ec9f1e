/**
 * The same chunked, pipelined ring all-reduce as src/comm, over plain TCP sockets (node:net):
 * the transport ceiling the benchmark compares the gRPC data plane with. Same schedule, same
 * gRPC length-prefix framing of raw float32 payloads, same zero-copy writes and SIMD adds; no HTTP/2, no
 * protobuf, no authentication, no fault handling (a benchmark only).
 */
import net from 'node:net';
import { allReduceSchedule } from '../src/comm/flat.js';
import { ChunkAdder } from '../src/comm/simd-add.js';
import { MessageReader } from '../src/comm/wire.js';

export class TcpRing {
  readonly #server: net.Server;
  #fromLeft: Promise<net.Socket>;
  #toRight: net.Socket | undefined;
  /** One reader for the connection's life: a message of the next collective may share a read with this one's last. */
  readonly #reader: MessageReader;
  readonly #adder: ChunkAdder;
  readonly #early: Buffer[] = [];
  #onMessage: ((m: Buffer) => void) | undefined;
  #error: Error | undefined;

  private constructor(
    server: net.Server,
    readonly chunkElements: number,
  ) {
    this.#server = server;
    this.#adder = new ChunkAdder(chunkElements * 4, chunkElements);
    this.#reader = new MessageReader(chunkElements * 4, (m) => (this.#onMessage ? this.#onMessage(m) : this.#early.push(Buffer.from(m))), this.#adder.assembly);
    this.#fromLeft = new Promise((resolve) =>
      server.once('connection', (s: net.Socket) => {
        s.on('data', (chunk: Buffer) => {
          try {
            this.#reader.push(chunk);
          } catch (e) {
            this.#error = e as Error;
          }
        });
        resolve(s);
      }),
    );
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

  async connect(right: string): Promise<void> {
    const [host, port] = right.split(':');
    this.#toRight = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(Number(port), host!, () => resolve(s));
      s.once('error', reject);
    });
    this.#toRight.setNoDelay(true);
    (await this.#fromLeft).setNoDelay(true);
  }

  async allReduce(buf: Float32Array, n: number, p: number, maxInFlight = 32 << 20): Promise<void> {
    const { sends, sendAfter, receives } = allReduceSchedule(buf.length, n, p, this.chunkElements);
    const out = this.#toRight!;
    await this.#fromLeft;
    let received = 0;
    let sent = 0;
    let outstanding = 0;
    await new Promise<void>((resolve, reject) => {
      const done = (): void => {
        if (this.#error) reject(this.#error);
        if (received === receives.length && sent === sends.length && outstanding === 0) {
          this.#onMessage = undefined;
          resolve();
        }
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
      this.#onMessage = (m) => {
        const t = receives[received++]!;
        const src = new Float32Array(m.buffer, m.byteOffset, t.length);
        const dst = buf.subarray(t.offset, t.offset + t.length);
        if (t.step < n - 1) this.#adder.add(dst, src);
        else dst.set(src);
        pump();
        done();
      };
      for (const m of this.#early.splice(0)) this.#onMessage(m);
      pump();
      done();
    });
  }

  close(): void {
    this.#toRight?.destroy();
    void this.#fromLeft.then((s) => s.destroy());
    this.#server.close();
  }
}
