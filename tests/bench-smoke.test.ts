import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { runScript } from './helpers.js';

/** A benchmark's stdout; its failure fails the test with its stderr. */
async function runBench(script: string, args: string[], timeout: number): Promise<string> {
  const r = await runScript(script, args, { timeout });
  if (r.code !== 0) throw new Error(`${script} exited ${r.code}\n${r.stderr}`);
  return r.stdout;
}

const BENCH = fileURLToPath(new URL('../bench/model.js', import.meta.url));

describe('bench:model', () => {
  it('prints tables and ends with one JSON line carrying the named figures (tiny sizes)', async () => {
    const args = ['--backends', 'wasm', '--presets', 'L1-H32', '--vocab', '60', '--seq', '16', '--batch', '2', '--steps', '1', '--recompute-hidden', '32', '--budget-mib', '16', '--no-stock'];
    const stdout = await runBench(BENCH, args, 120_000);
    const lines = stdout.trimEnd().split('\n');
    assert.match(stdout, /MLM training step, batch 2 x 16/);
    assert.match(lines.at(-2)!, /^reproduce: npm run bench:model -- --backends wasm/);
    const figures = JSON.parse(lines.at(-1)!) as {
      trainTokensPerSec: Record<string, Record<string, number>>;
      recompute: { layers: number; batchRatio: number; timeOverhead: number; peakBytes: Record<string, { plain: number; recompute: number }> };
    };
    assert.ok(figures.trainTokensPerSec['wasm']!['L1-H32']! > 0);
    assert.equal(figures.recompute.layers, 12);
    assert.ok(figures.recompute.batchRatio > 1, 'recompute fits a larger batch in the same budget');
    assert.ok(Number.isFinite(figures.recompute.timeOverhead), `time overhead ${figures.recompute.timeOverhead}`);
    for (const depth of ['L4-H32', 'L8-H32', 'L12-H32']) {
      const p = figures.recompute.peakBytes[depth]!;
      assert.ok(p.recompute < p.plain, `${depth}: recompute peak ${p.recompute} >= plain ${p.plain}`);
    }
  });
});

const OPTIM_BENCH = fileURLToPath(new URL('../bench/optim.js', import.meta.url));

describe('bench:optim', () => {
  it('prints tables and ends with one JSON line of state bytes, update times and the training runs (tiny sizes)', async () => {
    const args = ['--state-model', 'L1-H128', '--update-model', 'L1-H32', '--train-model', 'L1-H32', '--vocab', '300', '--update-steps', '1', '--bert-base-steps', '1', '--batch', '2', '--seq', '16'];
    const stdout = await runBench(OPTIM_BENCH, args, 180_000);
    const lines = stdout.trimEnd().split('\n');
    assert.match(stdout, /Optimizer state for L1-H128 shapes/);
    assert.match(lines.at(-2)!, /^reproduce: npm run bench:optim -- --state-model L1-H128/);
    const figures = JSON.parse(lines.at(-1)!) as {
      stateBytes: Record<string, number>;
      updateMsPerStep: Record<string, number>;
      bertBase: Record<string, { msPerStep: number; peakHeapBytes: number } | string>;
    };
    for (const name of ['adam', 'adafactor', 'adafactorBeta1', 'lamb']) {
      assert.ok(figures.stateBytes[name]! > 0, name);
      assert.ok(figures.updateMsPerStep[name]! > 0, name);
    }
    // L1-H128: every matrix has a dimension >= 128, so AdaFactor factors them all
    assert.ok(figures.stateBytes.adafactor! < 0.05 * figures.stateBytes.adam!, JSON.stringify(figures.stateBytes));
    assert.equal(figures.stateBytes.lamb, figures.stateBytes.adam);
    for (const name of ['adafactor', 'adam', 'tfjsAdam']) {
      const run = figures.bertBase[name]!;
      assert.ok(typeof run === 'object' && run.msPerStep > 0 && run.peakHeapBytes > 0, `${name}: ${JSON.stringify(run)}`);
    }
  });
});

const DATA_BENCH = fileURLToPath(new URL('../bench/data.js', import.meta.url));

describe('bench:data', () => {
  it('ends with one JSON line of tokenizer, prepare and training figures (tiny sizes)', async () => {
    const args = ['--repeat', '1', '--rounds', '1', '--memory-repeat', '2', '--train-model', 'L1-H32', '--train-vocab', '200', '--train-steps', '1', '--batch', '2', '--seq', '32'];
    const stdout = await runBench(DATA_BENCH, args, 180_000);
    const lines = stdout.trimEnd().split('\n');
    assert.match(stdout, /same ids as ours/);
    assert.match(stdout, /\d+\/\d+ lines/);
    assert.match(lines.at(-2)!, /^reproduce: npm run bench:data -- --repeat 1/);
    const figures = JSON.parse(lines.at(-1)!) as { tokenizer: { mbPerSec: number; peerMbPerSec: number }; prepare: { instancesPerSec: number }; trainingInstancesPerSec: number };
    assert.ok(figures.tokenizer.mbPerSec > 0 && figures.tokenizer.peerMbPerSec > 0);
    assert.ok(figures.prepare.instancesPerSec > 0 && figures.trainingInstancesPerSec > 0);
  });
});

const ALLREDUCE_BENCH = fileURLToPath(new URL('../bench/allreduce.js', import.meta.url));

describe('bench:allreduce', () => {
  it('prints a table per rank count and ends with one JSON line of gRPC and TCP busbw, every result checked (tiny sizes)', async () => {
    const args = ['--ranks', '2,3', '--sizes', '4KiB,64KiB', '--warmup', '1', '--iters', '2', '--chunk', '16KiB'];
    const stdout = await runBench(ALLREDUCE_BENCH, args, 120_000);
    const lines = stdout.trimEnd().split('\n');
    assert.match(stdout, /all-reduce, float32 sum, 2 ranks on 127\.0\.0\.1, chunk 16KiB/);
    assert.match(stdout, /all-reduce, float32 sum, 3 ranks/);
    assert.match(lines.at(-2)!, /^reproduce: npm run bench:allreduce -- --ranks 2,3 --sizes 4KiB,64KiB --warmup 1 --iters 2 --chunk 16KiB/);
    const figures = JSON.parse(lines.at(-1)!) as { busbw: Record<string, Record<string, number>>; tcpBusbw: Record<string, Record<string, number>>; correct: boolean };
    assert.equal(figures.correct, true);
    for (const n of ['2', '3']) {
      for (const size of ['4096', '65536']) {
        for (const [what, table] of [['gRPC', figures.busbw], ['TCP', figures.tcpBusbw]] as const) {
          const v = table[n]?.[size];
          assert.ok(typeof v === 'number' && Number.isFinite(v) && v > 0, `${what} busbw at ${n} ranks, ${size} bytes: ${v}`);
        }
      }
    }
  });
});

const TRAIN_BENCH = fileURLToPath(new URL('../bench/train.js', import.meta.url));

describe('bench:train', () => {
  it('runs 1 and 2 workers through the runtime, in rounds, and ends with the named figures (tiny sizes)', async () => {
    const stdout = await runBench(TRAIN_BENCH, ['--preset', 'L1-H32', '--vocab', '3275', '--seq', '32', '--global-batch', '4', '--steps', '2', '--rounds', '2', '--backend', 'cpu', '--ceiling-seconds', '1', '--peer', '/no/such/python'], 240_000);
    const lines = stdout.trimEnd().split('\n');
    assert.match(stdout, /MLM training through the runtime: L1-H32/);
    // a peer that cannot run is named and left out; the benchmark goes on
    assert.match(stdout, /\(the peer was left out: cannot run \/no\/such\/python/);
    assert.match(lines.at(-2)!, /^reproduce: npm run bench:train -- --preset L1-H32/);
    const figures = JSON.parse(lines.at(-1)!) as {
      preset: string; tokensPerSec: Record<string, number>; positionsPerSec: Record<string, number>; scalingEfficiency: number; allreduceShare: number; scalingEfficiencyPerRound: number[];
      busyShare: Record<string, number>; runtimeEfficiency: number; runtimeEfficiencyPerRound: number[]; computeSpeedRatioPerRound: number[];
      coreCeilingPerRound: number[]; coreSpeedRatioPerRound: number[];
    };
    assert.equal(figures.preset, 'L1-H32');
    assert.ok(!('peer' in figures), 'no peer figures without a peer');
    assert.equal(figures.scalingEfficiencyPerRound.length, 2, 'one ratio per round');
    for (const w of ['1', '2']) assert.ok(Number.isFinite(figures.tokensPerSec[w]) && figures.tokensPerSec[w]! > 0, JSON.stringify(figures));
    // padding included, positions are at least the records' tokens
    for (const w of ['1', '2']) assert.ok(figures.positionsPerSec[w]! >= figures.tokensPerSec[w]!, JSON.stringify(figures));
    assert.ok(Number.isFinite(figures.scalingEfficiency) && figures.scalingEfficiency > 0, JSON.stringify(figures));
    assert.ok(figures.allreduceShare > 0 && figures.allreduceShare < 1, JSON.stringify(figures));
    for (const w of ['1', '2']) assert.ok(figures.busyShare[w]! > 0 && figures.busyShare[w]! <= 1, JSON.stringify(figures));
    // each round's efficiency splits exactly into what the runtime cost and how fast the computation ran
    figures.scalingEfficiencyPerRound.forEach((e, i) => {
      const product = figures.runtimeEfficiencyPerRound[i]! * figures.computeSpeedRatioPerRound[i]!;
      assert.ok(Math.abs(e - product) < 0.01, `round ${i + 1}: efficiency ${e}, runtime x compute ${product}`);
    });
    // the core ceiling ran in both rounds: two lone runs and a pair, with finite figures
    assert.equal(figures.coreCeilingPerRound.length, 2);
    assert.ok(figures.coreCeilingPerRound.every((c) => c > 0 && Number.isFinite(c)), JSON.stringify(figures));
    assert.equal(figures.coreSpeedRatioPerRound.length, 2);
  });
});

const CHAOS = fileURLToPath(new URL('../bench/chaos.js', import.meta.url));

describe('chaos', () => {
  it('kills a worker and the coordinator, restarts them, and ends with every record once and identical replicas (small run)', async () => {
    const stdout = await runBench(CHAOS, ['--steps', '40', '--worker-kills', '1', '--coordinator-kills', '1'], 300_000);
    const lines = stdout.trimEnd().split('\n');
    assert.match(lines.at(-2)!, /^reproduce: npm run chaos -- --steps 40/);
    const figures = JSON.parse(lines.at(-1)!) as { workerKills: number; coordinatorKills: number; samplesLost: number; samplesRepeated: number; replicasIdentical: boolean; stepsCompleted: number };
    assert.deepEqual({ lost: figures.samplesLost, repeated: figures.samplesRepeated, identical: figures.replicasIdentical, steps: figures.stepsCompleted }, { lost: 0, repeated: 0, identical: true, steps: 40 }, stdout);
    assert.ok(figures.workerKills + figures.coordinatorKills >= 1, `at least one fault happened: ${stdout}`);
  });
});
