/**
 * bench:train: training throughput through the whole runtime (coordinator, control plane,
 * workers as processes, ring all-reduce), with 1 and with 2 local workers on the same
 * global batch, so the scaling efficiency reads directly. The data is the sample corpus
 * prepared at the sequence length; the model's vocabulary is Google's Chinese BERT's size
 * (21128), which sets the cost of the output softmax, whatever the data's vocabulary.
 *
 * The machines here change speed by 20-30% within a minute (two vCPUs whose hosts are
 * shared), so one run of each worker count compares two different machines. The runs are
 * interleaved in rounds, the order reversed every other round, and the figures are the
 * medians over the rounds (the efficiency: the median of each round's own ratio).
 *
 * So the benchmark also splits the efficiency into what the runtime costs and how fast the
 * computation ran, and measures the machine itself:
 * - the busy share: the share of the workers' time spent in forward+backward, read within
 *   each run; the runtime efficiency is the 2-worker busy share over the 1-worker one (what
 *   the runtime itself costs: the all-reduce, the optimizer update, messages, waits);
 * - the compute speed ratio: forward+backward seconds per sample (all ranks) with 1 worker
 *   over with 2. Each round's efficiency is exactly its runtime efficiency times this ratio
 *   (both runs train on the same records), so the two say whether the runtime or the
 *   computation lost the rest;
 * - the core ceiling, measured in every round (bench/core-ceiling.ts): each core alone and
 *   both at once, with no communication. Its ceiling says how much the cores slow each
 *   other down, its core speed ratio how unequal the two vCPUs were in those minutes: a
 *   1-worker run on the faster one caps the scaling efficiency at ceiling x (1 + ratio) / 2,
 *   whatever the runtime does.
 */
import { canPinWorkers } from '../src/coordinator/cpu-pinning.js';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, Option } from 'commander';
import { nonNegativeInt, positiveInt } from '../src/cli/common.js';
import { startRun } from '../src/coordinator/start.js';
import type { StepBreakdown } from '../src/coordinator/coordinator.js';
import { prepare } from '../src/data/prepare.js';
import { presetConfig } from '../src/model/config.js';
import { median, table } from './common.js';
import { type CoreCeiling, measureCoreCeiling } from './core-ceiling.js';
import { type PeerRound, runPeerRound } from './ddp-peer.js';

interface Options {
  preset: string;
  vocab: number;
  seq: number;
  globalBatch: number;
  steps: number;
  workers: string;
  recompute: boolean;
  backend: string;
  allreduceCompression: 'none' | 'fp16';
  shardOptimizer: boolean;
  balance: 'even' | 'dynamic';
  rounds: number;
  ceilingSeconds: number;
  /** --no-pin-workers sets it false. */
  pinWorkers: boolean;
  peer?: string;
}

const SAMPLE = fileURLToPath(new URL('../../data/sample/', import.meta.url));

function parse(argv: string[]): Options {
  const program = new Command('bench:train')
    .description('Tokens/s of MLM training through the coordinator and its workers (AdaFactor), with 1 and 2 local workers')
    .option('--preset <L..-H..>', 'model size', 'L4-H256')
    .option('--vocab <n>', 'the model\'s vocabulary size', positiveInt, 21128)
    .option('--seq <n>', 'sequence length (the data is prepared at it)', positiveInt, 128)
    .option('--global-batch <n>', 'sequences per step', positiveInt, 16)
    .option('--steps <n>', 'steps per run; the first is not timed', positiveInt, 10)
    .option('--rounds <n>', 'rounds of runs (each worker count once per round, interleaved); figures are medians over the rounds', positiveInt, 3)
    .option('--no-pin-workers', 'leave the local workers to the scheduler (default: pinned to a CPU each, coordinator start --pin-workers, where taskset works)')
    .option('--ceiling-seconds <n>', 'seconds of each kind of phase of the core ceiling in every round (core 0 alone, core 1 alone, both at once; no communication); 0 skips it', nonNegativeInt, 10)
    .option('--workers <list>', 'worker counts to run', '1,2')
    .option('--recompute', 'recompute each block in backprop', false)
    .option('--backend <name>', 'backend of the workers', 'wasm')
    .option('--allreduce-compression <kind>', 'none or fp16 (gradients as float16 in the all-reduce)', 'none')
    .option('--shard-optimizer', 'each worker updates its segment of the parameters (coordinator start --shard-optimizer)', false)
    .addOption(new Option('--balance <how>', 'how a step is split across the workers (coordinator start --balance)').choices(['dynamic', 'even']).default('dynamic'))
    .option('--peer <python>', 'after each round, PyTorch DDP (gloo) on the same model and global batch with 1 and 2 processes (bench/peers/torch_ddp_train.py), run by this Python, e.g. /usr/bin/python3 with python3-torch');
  program.parse(argv, { from: 'user' });
  return program.opts<Options>();
}

async function main(): Promise<void> {
  const opts = parse(process.argv.slice(2));
  const counts = opts.workers.split(',').map(Number);
  // pinned as the core ceiling's processes are, where taskset works (else as before)
  const pin = opts.pinWorkers && canPinWorkers();
  const dir = await mkdtemp(path.join(tmpdir(), 'bench-train-'));
  try {
    const data = path.join(dir, 'data');
    await prepare({ corpus: [path.join(SAMPLE, 'corpus.txt')], vocab: path.join(SAMPLE, 'vocab.txt'), out: data, task: 'mlm', maxLength: opts.seq, seed: 1, recordsPerShard: 5000, documents: 'blank-line', lowerCase: true, force: false });
    const model = presetConfig(opts.preset, opts.vocab, { max_position_embeddings: Math.max(512, opts.seq) });
    type Result = { tokensPerSecond: number; positionsPerSecond: number; allreduceShare: number; coordinatorCpuShare: number; breakdown: StepBreakdown };
    const runs = new Map<number, Result[]>(counts.map((w) => [w, []]));
    const ceilings: CoreCeiling[] = [];
    const peerRounds: PeerRound[] = [];
    let peerProblem: string | undefined;
    for (let round = 0; round < opts.rounds; round++) {
      if (opts.ceilingSeconds > 0) {
        // a worker's share of the step: the forward+backward each of 2 workers runs
        const job = { preset: opts.preset, vocab: opts.vocab, seq: opts.seq, batch: Math.ceil(opts.globalBatch / 2), seconds: opts.ceilingSeconds, backend: opts.backend };
        const ceiling = await measureCoreCeiling(job, round);
        ceilings.push(ceiling);
        console.error(`round ${round + 1}/${opts.rounds}, core ceiling ${ceiling.ceiling.toFixed(3)}, core speed ratio ${ceiling.coreSpeedRatio.toFixed(3)} (forward+backward ${ceiling.aloneMs.map(Math.round).join(' and ')} ms alone, ${ceiling.pairMs.map(Math.round).join(' and ')} ms side by side)`);
      }
      for (const workers of round % 2 === 0 ? counts : [...counts].reverse()) {
        const result = await startRun({
          runDir: path.join(dir, `run-${round}-${workers}`),
          data,
          model,
          application: 'encoder',
          optimizer: { type: 'adafactor', learningRate: 0.01 },
          steps: opts.steps,
          globalBatch: opts.globalBatch,
          microBatch: 0,
          allreduceCompression: opts.allreduceCompression,
          shardOptimizer: opts.shardOptimizer,
          balance: opts.balance,
          seed: 1,
          clipNorm: 1,
          recompute: opts.recompute,
          checkpointEvery: opts.steps + 1,
          keep: 1,
          checksumEvery: 0,
          localWorkers: workers,
          pinWorkers: pin,
          minWorkers: workers,
          backend: opts.backend,
          host: '127.0.0.1',
          port: 0,
          joinTimeoutMs: 120_000,
          stepTimeoutMs: 600_000,
          heartbeatTimeoutMs: 30_000,
          logEvery: opts.steps,
          log: () => {},
        });
        runs.get(workers)!.push({ tokensPerSecond: result.tokensPerSecond, positionsPerSecond: result.positionsPerSecond, allreduceShare: result.allreduceShare, coordinatorCpuShare: result.coordinatorCpuShare, breakdown: result.breakdown });
        console.error(`round ${round + 1}/${opts.rounds}, ${workers} worker(s): ${Math.round(result.tokensPerSecond)} tokens/s`);
      }
      if (opts.peer && peerProblem === undefined) {
        try {
          const peer = await runPeerRound({ python: opts.peer, preset: opts.preset, vocab: opts.vocab, seq: opts.seq, globalBatch: opts.globalBatch, steps: opts.steps });
          peerRounds.push(peer);
          console.error(`round ${round + 1}/${opts.rounds}, PyTorch DDP: ${Object.entries(peer.tokensPerSec).map(([n, t]) => `${n} process(es) ${t} tokens/s`).join(', ')}`);
        } catch (e) {
          peerProblem = (e as Error).message;
          console.error(`the peer is left out: ${peerProblem}`);
        }
      }
    }
    const medianOf = (w: number, pick: (r: Result) => number): number => median(runs.get(w)!.map(pick));
    const ms = (x: number) => Math.round(1000 * x);
    const phases = ['stepSeconds', 'forwardBackwardSeconds', 'copySeconds', 'reduceSeconds', 'waitSeconds', 'applySeconds', 'otherSeconds'] as const;
    const breakdown = (w: number) => Object.fromEntries(phases.map((k) => [k, medianOf(w, (r) => r.breakdown[k])])) as Record<(typeof phases)[number], number>;
    table(
      `MLM training through the runtime: ${opts.preset}, vocab ${opts.vocab}, seq ${opts.seq}, global batch ${opts.globalBatch}, AdaFactor${opts.recompute ? ', recompute' : ''}${opts.allreduceCompression === 'fp16' ? ', fp16 all-reduce' : ''}${opts.shardOptimizer ? ', sharded update' : ''}, ${opts.backend} workers, balance ${opts.balance}; medians of ${opts.rounds} round(s)`,
      ['workers', 'tokens/s', 'each round', 'positions/s', 'all-reduce share', 'coordinator CPU'],
      counts.map((w) => [w, Math.round(medianOf(w, (r) => r.tokensPerSecond)), runs.get(w)!.map((r) => Math.round(r.tokensPerSecond)).join(' / '), Math.round(medianOf(w, (r) => r.positionsPerSecond)), `${(100 * medianOf(w, (r) => r.allreduceShare)).toFixed(1)}%`, `${(100 * medianOf(w, (r) => r.coordinatorCpuShare)).toFixed(1)}%`]),
    );
    table(
      'where a step goes, ms per step (medians over the rounds), along the rank with the longest forward+backward (all-reduce: its own, which waits for nobody; the others waited up to `wait` longer in theirs; apply: the optimizer update; other: data, messages, the journal, clipping; busy share: the share of all the workers\' time spent in forward+backward)',
      ['workers', 'step', 'forward+backward', 'copy out + pieces', 'all-reduce', 'wait', 'apply', 'other', 'busy share'],
      counts.map((w) => {
        const b = breakdown(w);
        return [w, ms(b.stepSeconds), ms(b.forwardBackwardSeconds), ms(b.copySeconds), ms(b.reduceSeconds), ms(b.waitSeconds), ms(b.applySeconds), ms(b.otherSeconds), `${(100 * medianOf(w, (r) => r.breakdown.busyShare)).toFixed(1)}%`];
      }),
    );
    const ones = runs.get(1);
    const twos = runs.get(2);
    /** A figure of each round, comparing its 1-worker and 2-worker runs (none without both counts). */
    const perRound = (of: (one: Result, two: Result) => number): number[] => (ones && twos ? ones.map((one, i) => of(one, twos[i]!)) : []);
    const summary = (what: string, values: readonly number[]): void => {
      if (values.length > 0) console.log(`${what}: ${median(values).toFixed(3)} (median; each round: ${values.map((e) => e.toFixed(3)).join(' / ')})`);
    };
    const efficiencyPerRound = perRound((one, two) => two.tokensPerSecond / (2 * one.tokensPerSecond));
    const runtimePerRound = perRound((one, two) => two.breakdown.busyShare / one.breakdown.busyShare);
    // per round, efficiency = runtime efficiency x compute speed ratio (the same records in both runs)
    const computePerRound = perRound((one, two) => one.breakdown.forwardBackwardPerSampleSeconds / two.breakdown.forwardBackwardPerSampleSeconds);
    console.log('');
    summary('scaling efficiency, 2 workers against twice 1', efficiencyPerRound);
    summary('runtime efficiency, the 2-worker busy share over the 1-worker one', runtimePerRound);
    summary("compute speed ratio, forward+backward per sample with 1 worker over with 2 (each round's efficiency is its runtime efficiency times this)", computePerRound);
    if (ceilings.length > 0) {
      table(
        `core ceiling: forward+backward of ${Math.ceil(opts.globalBatch / 2)} sequences for ${opts.ceilingSeconds} s of each kind, ${ceilings[0]!.pinned ? 'pinned to core 0 alone, core 1 alone, both at once' : 'one process alone, the other alone, both at once (no taskset: not pinned)'}, in turns, three times over, no communication. ceiling: the pair's samples/s over the sum of the lone runs'; speed ratio: the slower core's over the faster's`,
        ['round', 'core 0 ms', 'core 1 ms', 'both at once ms', 'ceiling', 'speed ratio', 'efficiency cap: ceiling x (1 + ratio) / 2'],
        ceilings.map((c, i) => [i + 1, Math.round(c.aloneMs[0]), Math.round(c.aloneMs[1]), c.pairMs.map(Math.round).join(' / '), c.ceiling.toFixed(3), c.coreSpeedRatio.toFixed(3), ((c.ceiling * (1 + c.coreSpeedRatio)) / 2).toFixed(3)]),
      );
    }
    // the peer's medians by process count ('1', '2')
    const peerMedians = Object.fromEntries(Object.keys(peerRounds[0]?.tokensPerSec ?? {}).map((n) => [n, Math.round(median(peerRounds.map((p) => p.tokensPerSec[n]!)))]));
    if (peerRounds.length > 0) {
      table(
        'PyTorch DistributedDataParallel (gloo, one thread a process, pinned) on the same model and global batch, SGD, after each round above; tokens/s of every position (its sequences are all full length: compare with our positions/s, padding included, since our records average less)',
        ['processes', 'tokens/s (median)', 'each round'],
        Object.entries(peerMedians).map(([n, tokens]) => [n, tokens, peerRounds.map((p) => p.tokensPerSec[n]).join(' / ')]),
      );
    }
    const peerEfficiencyPerRound = peerRounds.filter((p) => p.tokensPerSec['1'] && p.tokensPerSec['2']).map((p) => p.tokensPerSec['2']! / (2 * p.tokensPerSec['1']!));
    summary('PyTorch DDP scaling efficiency, 2 processes against twice 1', peerEfficiencyPerRound);
    if (peerProblem) console.log(`(the peer was left out: ${peerProblem})`);
    console.log(`\nreproduce: npm run bench:train -- --preset ${opts.preset} --vocab ${opts.vocab} --seq ${opts.seq} --global-batch ${opts.globalBatch} --steps ${opts.steps} --rounds ${opts.rounds} --workers ${opts.workers} --ceiling-seconds ${opts.ceilingSeconds}${pin ? '' : ' --no-pin-workers'}${opts.recompute ? ' --recompute' : ''} --backend ${opts.backend}${opts.allreduceCompression === 'fp16' ? ' --allreduce-compression fp16' : ''}${opts.shardOptimizer ? ' --shard-optimizer' : ''} --balance ${opts.balance}${opts.peer ? ` --peer ${opts.peer}` : ''}`);
    const widest = Math.max(...counts);
    const figure = (x: number): number => Number(x.toFixed(3));
    const medianFigure = (values: readonly number[]): number | null => (values.length > 0 ? figure(median(values)) : null);
    console.log(
      JSON.stringify({
        preset: opts.preset,
        tokensPerSec: Object.fromEntries(counts.map((w) => [String(w), Math.round(medianOf(w, (r) => r.tokensPerSecond))])),
        positionsPerSec: Object.fromEntries(counts.map((w) => [String(w), Math.round(medianOf(w, (r) => r.positionsPerSecond))])),
        scalingEfficiency: medianFigure(efficiencyPerRound),
        allreduceShare: figure(medianOf(widest, (r) => r.allreduceShare)),
        coordinatorCpuShare: figure(medianOf(widest, (r) => r.coordinatorCpuShare)),
        rounds: opts.rounds,
        scalingEfficiencyPerRound: efficiencyPerRound.map(figure),
        busyShare: Object.fromEntries(counts.map((w) => [String(w), figure(medianOf(w, (r) => r.breakdown.busyShare))])),
        runtimeEfficiency: medianFigure(runtimePerRound),
        runtimeEfficiencyPerRound: runtimePerRound.map(figure),
        computeSpeedRatioPerRound: computePerRound.map(figure),
        coreCeilingPerRound: ceilings.map((c) => figure(c.ceiling)),
        coreSpeedRatioPerRound: ceilings.map((c) => figure(c.coreSpeedRatio)),
        ...(peerRounds.length > 0
          ? { peer: { ddpTokensPerSec: peerMedians, ddpScalingEfficiency: medianFigure(peerEfficiencyPerRound), ddpScalingEfficiencyPerRound: peerEfficiencyPerRound.map(figure) } }
          : {}),
        stepMs: Object.fromEntries(counts.map((w) => [String(w), Object.fromEntries(Object.entries(breakdown(w)).map(([k, v]) => [k.replace(/Seconds$/, ''), ms(v)]))])),
      }),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
// the runs' sockets and children are closed; nothing is left to wait for
process.exit();
