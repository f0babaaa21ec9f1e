/**
 * bench:allreduce, shaped like nccl-tests' all_reduce_perf: ranks as separate processes on
 * loopback, sizes doubling, warm-up then timed iterations, time / algbw / busbw per size,
 * every result checked against the exact sum; and the same ring over plain TCP as the
 * transport ceiling. The last line is one JSON object of the figures.
 */
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Command, InvalidArgumentError, Option } from 'commander';
import { DEFAULT_CHUNK_ELEMENTS } from '../src/comm/communicator.js';
import { RankGroup } from '../src/comm/local-launch.js';
import { median, table } from './common.js';
import type { RankConfig } from './allreduce-rank.js';

const RANK_SCRIPT = fileURLToPath(new URL('./allreduce-rank.js', import.meta.url));

function parseSize(text: string): number {
  const m = /^(\d+)\s*(B|KiB|MiB|GiB)?$/i.exec(text.trim());
  if (!m) throw new InvalidArgumentError(`'${text}' is not a size such as 4096, 64KiB or 64MiB`);
  const unit = { b: 1, kib: 1 << 10, mib: 1 << 20, gib: 1 << 30 }[(m[2] ?? 'b').toLowerCase()]!;
  const bytes = Number(m[1]) * unit;
  if (bytes % 4 !== 0) throw new InvalidArgumentError(`${text} is not a whole number of float32s`);
  return bytes;
}

function formatSize(bytes: number): string {
  for (const [unit, scale] of [['GiB', 1 << 30], ['MiB', 1 << 20], ['KiB', 1 << 10]] as const) if (bytes >= scale && bytes % scale === 0) return `${bytes / scale}${unit}`;
  return `${bytes}B`;
}

const list = <T>(parse: (s: string) => T) => (text: string): T[] => text.split(',').map((s) => parse(s));
const integer = (min: number) => (s: string): number => {
  const v = Number(s);
  if (!Number.isInteger(v) || v < min) throw new InvalidArgumentError(`'${s}' is not an integer >= ${min}`);
  return v;
};
const positive = integer(1);
const nonNegative = integer(0);
const atLeastTwo = integer(2);

const DEFAULT_SIZES = Array.from({ length: 19 }, (_, i) => 1024 * 2 ** i); // 1 KiB .. 256 MiB

const program = new Command('bench:allreduce')
  .description('Ring all-reduce of float32 buffers between rank processes on 127.0.0.1: the gRPC data plane (src/comm) and the same ring over plain TCP')
  .option('--ranks <list>', 'rank counts (2 or more), comma-separated', list(atLeastTwo), [2, 4])
  .addOption(new Option('--sizes <list>', 'buffer sizes in bytes, comma-separated (4096, 64KiB, 64MiB)').argParser(list(parseSize)).default(DEFAULT_SIZES, '1KiB to 256MiB, doubling'))
  .option('--warmup <n>', 'untimed iterations per size', nonNegative, 2)
  .option('--iters <n>', 'timed iterations per size (default: 5 to 20, fewer for large sizes)', positive)
  .option('--chunk <bytes>', 'chunk size, the unit of pipelining (the Communicator\'s default)', parseSize, DEFAULT_CHUNK_ELEMENTS * 4)
  .option('--in-flight <bytes>', 'bytes written but not yet flushed, at most, per rank', parseSize, 32 << 20)
  .option('--compression <none|fp16>', 'compression of the gRPC all-reduce', 'none')
  .option('--no-tcp', 'skip the plain-TCP ring')
  .option('--split', 'also time reduceScatter then allGatherSegments on the gRPC data plane (even segments): the collectives of a sharded optimizer update')
  .option('--plain-buffers', 'reduce plain Float32Arrays (copied through the adder) instead of buffers from Communicator.allocate (added in place, as the trainer\'s gradients are)')
  .option('--profile <dir>', 'write a V8 CPU profile of every rank process into <dir> (node --cpu-prof)')
  .addHelpText('after', '\nExample: npm run bench:allreduce -- --ranks 2,4 --sizes 64MiB\nbusbw = algbw * 2(n-1)/n (nccl-tests); time is the median over iterations of the slowest rank;\ncpu ms is the CPU time (user + system) one rank spends per collective, mean over ranks.');

interface Options {
  ranks: number[];
  sizes: number[];
  warmup: number;
  iters?: number;
  chunk: number;
  inFlight: number;
  compression: string;
  tcp: boolean;
  split?: boolean;
  plainBuffers?: boolean;
  profile?: string;
}

interface Figure {
  time: number;
  /** CPU seconds per collective, mean over ranks */
  cpu: number;
  correct: boolean;
}

async function runRanks(n: number, o: Options): Promise<Map<string, Figure>> {
  const iters = o.sizes.map((b) => o.iters ?? Math.max(5, Math.min(20, Math.floor((512 << 20) / b))));
  const transports: RankConfig['transports'] = ['grpc', ...(o.tcp ? (['tcp'] as const) : []), ...(o.split ? (['split'] as const) : [])];
  const token = randomBytes(24).toString('hex');
  const config = (rank: number): RankConfig => ({ rank, n, sizes: o.sizes, transports, warmup: o.warmup, iters, chunkElements: o.chunk / 4, compression: o.compression as RankConfig['compression'], maxInFlightBytes: o.inFlight, plainBuffers: o.plainBuffers === true });
  const nodeArgs = o.profile ? ['--cpu-prof', `--cpu-prof-dir=${o.profile}`] : [];
  const group = await RankGroup.start(RANK_SCRIPT, n, { nodeArgs, env: (rank) => ({ ...process.env, BENCH_RANK: JSON.stringify(config(rank)), COMM_TOKEN: token }) });
  const results = new Map<string, Figure>();
  try {
    for (const bytes of o.sizes) {
      for (const transport of transports) {
        const reports = await Promise.all([...Array(n).keys()].map((r) => group.next(r, 900_000)));
        const times = reports[0]!.times as number[];
        // per iteration the slowest rank, then the median over iterations
        const slowest = times.map((_, it) => Math.max(...reports.map((m) => (m.times as number[])[it]!)));
        const cpu = reports.reduce((sum, m) => sum + (m.cpuSeconds as number), 0) / n;
        results.set(`${transport}:${bytes}`, { time: median(slowest), cpu, correct: reports.every((m) => m.correct === true) });
      }
    }
    await Promise.all([...Array(n).keys()].map((r) => group.exit(r)));
  } finally {
    await group.stop();
  }
  return results;
}

async function main(): Promise<void> {
  const o = program.parse().opts<Options>();
  if (o.compression !== 'none' && o.compression !== 'fp16') throw new InvalidArgumentError(`--compression ${o.compression} is not none or fp16`);
  const figures = { busbw: {} as Record<string, Record<string, number>>, tcpBusbw: {} as Record<string, Record<string, number>>, splitBusbw: {} as Record<string, Record<string, number>>, correct: true };
  for (const n of o.ranks) {
    const r = await runRanks(n, o);
    const rows: (string | number)[][] = [];
    const gb = (bytes: number, t: number): number => bytes / t / 1e9;
    const factor = (2 * (n - 1)) / n;
    figures.busbw[n] = {};
    if (o.tcp) figures.tcpBusbw[n] = {};
    if (o.split) figures.splitBusbw[n] = {};
    for (const bytes of o.sizes) {
      const g = r.get(`grpc:${bytes}`)!;
      const t = r.get(`tcp:${bytes}`);
      const sp = r.get(`split:${bytes}`);
      figures.busbw[n]![bytes] = round(gb(bytes, g.time) * factor);
      if (t) figures.tcpBusbw[n]![bytes] = round(gb(bytes, t.time) * factor);
      if (sp) figures.splitBusbw[n]![bytes] = round(gb(bytes, sp.time) * factor);
      figures.correct &&= g.correct && (t?.correct ?? true) && (sp?.correct ?? true);
      const row: (string | number)[] = [formatSize(bytes), bytes / 4, (g.time * 1e6).toFixed(0), gb(bytes, g.time).toFixed(3), (gb(bytes, g.time) * factor).toFixed(3), (g.cpu * 1e3).toFixed(1), g.correct ? 'ok' : 'WRONG'];
      if (t) row.push((t.time * 1e6).toFixed(0), gb(bytes, t.time).toFixed(3), (gb(bytes, t.time) * factor).toFixed(3), (t.cpu * 1e3).toFixed(1), t.correct ? 'ok' : 'WRONG', `${((100 * t.time) / g.time).toFixed(0)}%`);
      if (sp) row.push((sp.time * 1e6).toFixed(0), (gb(bytes, sp.time) * factor).toFixed(3), sp.correct ? 'ok' : 'WRONG', `${((100 * sp.time) / g.time).toFixed(0)}%`);
      rows.push(row);
    }
    const header = ['size', 'count', 'grpc us', 'algbw GB/s', 'busbw GB/s', 'cpu ms', 'check'];
    if (o.tcp) header.push('tcp us', 'algbw GB/s', 'busbw GB/s', 'cpu ms', 'check', 'grpc/tcp');
    if (o.split) header.push('rs+ag us', 'busbw GB/s', 'check', 'rs+ag/grpc');
    table(`all-reduce, float32 sum, ${n} ranks on 127.0.0.1, chunk ${formatSize(o.chunk)}${o.compression === 'fp16' ? ', fp16 compression' : ''}, ${o.plainBuffers ? 'plain Float32Arrays' : 'buffers from Communicator.allocate'}`, header, rows);
  }
  const args = [`--ranks ${o.ranks.join(',')}`, `--sizes ${o.sizes.map(formatSize).join(',')}`, `--warmup ${o.warmup}`, ...(o.iters ? [`--iters ${o.iters}`] : []), `--chunk ${formatSize(o.chunk)}`, `--in-flight ${formatSize(o.inFlight)}`, ...(o.compression !== 'none' ? [`--compression ${o.compression}`] : []), ...(o.tcp ? [] : ['--no-tcp']), ...(o.split ? ['--split'] : []), ...(o.plainBuffers ? ['--plain-buffers'] : [])];
  console.log(`\nreproduce: npm run bench:allreduce -- ${args.join(' ')}`);
  console.log(JSON.stringify(figures));
  if (!figures.correct) process.exitCode = 1;
}

/** Four significant digits: small sizes move a few MB/s, which three decimals of GB/s would round to 0. */
const round = (x: number): number => Number(x.toPrecision(4));

main().catch((e: Error) => {
  console.error(`bench:allreduce: ${e.message}`);
  process.exit(2);
});
