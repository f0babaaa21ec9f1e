/**
 * One rank of bench:allreduce (started by bench/allreduce.ts): all-reduces buffers of each
 * size over the gRPC data plane and over the plain-TCP ring, timing every iteration and
 * checking every result against the exact reference sum.
 */
import { CommServer, Communicator, JoinToken } from '../src/comm/index.js';
import { joinLocalGroup, report } from '../src/comm/local-launch.js';
import { TcpRing } from './tcp-ring.js';

export interface RankConfig {
  rank: number;
  n: number;
  sizes: number[]; // bytes
  /** split: the gRPC data plane's reduceScatter then allGatherSegments (even segments), what a sharded optimizer update would run */
  transports: ('grpc' | 'tcp' | 'split')[];
  warmup: number;
  iters: number[]; // timed iterations per size
  chunkElements: number;
  compression: 'none' | 'fp16';
  maxInFlightBytes: number;
  /** Plain Float32Arrays instead of buffers from Communicator.allocate. */
  plainBuffers: boolean;
}

/** Small integers: every partial sum is exact in float32, so the check is exact whatever the order. */
export const pattern = (rank: number, i: number): number => ((i * 7 + rank * 13) % 1024) - 512;

async function main(): Promise<void> {
  const config = JSON.parse(process.env.BENCH_RANK ?? '') as RankConfig;
  const { rank, n } = config;
  const token = JoinToken.fromEnvironment();
  const server = await CommServer.listen({ runId: 'bench-allreduce', token });
  const tcp = await TcpRing.listen('127.0.0.1', config.chunkElements);
  const all = await joinLocalGroup({ grpc: server.address, tcp: tcp.address });
  const comm = new Communicator(server, { generation: 1, rank, peers: all.map((a) => String(a.grpc)), chunkElements: config.chunkElements, deadlineMs: 600_000, maxInFlightBytes: config.maxInFlightBytes });
  await tcp.connect(String(all[(rank - 1 + n) % n]!.tcp));
  // the transports take turns iteration by iteration, so that both see the same machine
  // (this one is shared: other work comes and goes)
  for (const [k, bytes] of config.sizes.entries()) {
    const elements = bytes / 4;
    const pristine = new Float32Array(elements);
    const expected = new Float32Array(elements);
    for (let i = 0; i < elements; i++) {
      pristine[i] = pattern(rank, i);
      let sum = 0;
      for (let r = 0; r < n; r++) sum += pattern(r, i);
      expected[i] = sum;
    }
    const buf = config.plainBuffers ? new Float32Array(elements) : comm.allocate(elements);
    const evenBounds = [...Array(n + 1).keys()].map((r) => Math.floor((r * elements) / n));
    const stats = new Map(config.transports.map((t) => [t, { times: [] as number[], cpuMicros: 0, correct: true }]));
    for (let it = 0; it < config.warmup + config.iters[k]!; it++) {
      // which goes first alternates: the first after the barrier meets the other ranks' leftover work
      for (const transport of it % 2 === 0 ? config.transports : [...config.transports].reverse()) {
        const s = stats.get(transport)!;
        buf.set(pristine);
        await comm.allGather([it]); // barrier: the timing starts together on every rank
        const cpu0 = process.cpuUsage();
        const t0 = process.hrtime.bigint();
        if (transport === 'grpc') await comm.allReduce(buf, { compression: config.compression });
        else if (transport === 'split') {
          await comm.reduceScatter(buf, evenBounds);
          await comm.allGatherSegments(buf, evenBounds);
        } else await tcp.allReduce(buf, n, rank, config.maxInFlightBytes);
        const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
        const cpu = process.cpuUsage(cpu0);
        if (it >= config.warmup) {
          s.times.push(seconds);
          s.cpuMicros += cpu.user + cpu.system;
        }
        // exact also with fp16: the partial sums are integers below 2048 in magnitude
        for (let i = 0; i < elements; i++) if (buf[i] !== expected[i]) s.correct = false;
      }
    }
    for (const [transport, s] of stats) report({ transport, bytes, times: s.times, cpuSeconds: s.cpuMicros / 1e6 / config.iters[k]!, correct: s.correct });
  }
  comm.close();
  tcp.close();
  await server.close();
  process.exit(0);
}

main().catch((e: Error) => {
  process.stderr.write(`rank failed: ${e.stack ?? e.message}\n`);
  process.exit(1);
});
