/**
 * npm run bench:model -- training throughput per backend and size, the wasm kernel fixes
 * against stock tfjs-backend-wasm, and what recompute buys in memory and costs in time.
 * Prints tables, the command to reproduce, and as its last line one JSON object.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Command, Option } from 'commander';
import { selectBackend } from '../src/backend/index.js';
import { ALL_WASM_KERNEL_FIXES, installWasmKernelFixes, uninstallWasmKernelFixes } from '../src/backend/wasm-kernels.js';
import { buildTransformer, disposeTransformer } from '../src/model/build.js';
import { presetConfig } from '../src/model/config.js';
import { clipByGlobalNorm } from '../src/train/gradients.js';
import { PretrainingObjective } from '../src/train/step.js';
import type { Batch } from '../src/batch.js';
import { median, mib, mlmBatch, table } from './common.js';

type BackendName = 'tensorflow' | 'wasm' | 'cpu';

interface Options {
  backends: string;
  presets: string;
  vocab: number;
  batch: number;
  seq: number;
  steps: number;
  recomputeLayers: number;
  recomputeHidden: number;
  budgetMib: number;
  stock: boolean;
  recompute: boolean;
}

const program = new Command('bench:model')
  .description('MLM training-step throughput, wasm kernel fixes vs stock, recompute memory/time')
  .option('--backends <list>', 'comma-separated backends to measure (tensorflow is skipped when not installed)', 'tensorflow,wasm,cpu')
  .option('--presets <list>', 'model sizes', 'L2-H128,L4-H256,L4-H512')
  .addOption(new Option('--vocab <n>', 'vocabulary size (21128 = Google Chinese BERT)').default(21128).argParser(Number))
  .addOption(new Option('--batch <n>', 'sequences per step').default(8).argParser(Number))
  .addOption(new Option('--seq <n>', 'sequence length').default(128).argParser(Number))
  .addOption(new Option('--steps <n>', 'measured steps per row on wasm/tensorflow (cpu: fewer)').default(5).argParser(Number))
  .addOption(new Option('--recompute-layers <n>', 'depth of the recompute model').default(12).argParser(Number))
  .addOption(new Option('--recompute-hidden <n>', 'width of the recompute model').default(256).argParser(Number))
  .addOption(new Option('--budget-mib <n>', 'memory budget (peak tensor bytes) for the batch ratio').default(1024).argParser(Number))
  .option('--no-stock', 'skip the stock-wasm comparison')
  .option('--no-recompute', 'skip the recompute section');

/** cpu sizes after one that took longer than this per step are skipped. */
const CPU_SKIP_AFTER_MS = 60_000;

interface Trainer {
  step(seed: number): void;
  objective: PretrainingObjective;
  dispose(): void;
}

/**
 * One training step: gradients, global-norm clipping, and a plain SGD update applied
 * weight by weight. The optimizer library (and its memory) is measured by bench:optim;
 * tfjs's own Adam keeps every temporary of every weight alive until the whole update
 * ends, which would swamp the activation memory this benchmark is about.
 */
function makeTrainer(preset: string, vocab: number, batch: Batch, recompute: boolean): Trainer {
  const model = buildTransformer(presetConfig(preset, vocab), { seed: 1 });
  const objective = new PretrainingObjective(model);
  return {
    objective,
    step(seed: number) {
      const { grads } = objective.compute(batch, { dropoutSeed: seed, recompute });
      const clipped = clipByGlobalNorm(grads, 1);
      tf.dispose(grads);
      objective.weights.forEach((w, i) => {
        tf.tidy(() => w.variable.assign(tf.sub(w.variable, tf.mul(clipped.grads[i]!, 1e-4))));
      });
      tf.dispose(clipped.grads);
    },
    dispose() {
      disposeTransformer(model);
    },
  };
}

/**
 * Median milliseconds per step after `warmup` steps. When the first step alone takes
 * longer than `slowMs` (cpu on the larger sizes), that single step is the measurement.
 */
function timeSteps(trainer: Trainer, warmup: number, steps: number, slowMs = Infinity): { ms: number; measured: number } {
  const first = performance.now();
  trainer.step(1000);
  const firstMs = performance.now() - first;
  if (firstMs > slowMs) return { ms: firstMs, measured: 1 };
  for (let i = 1; i < warmup; i++) trainer.step(1000 + i);
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t = performance.now();
    trainer.step(i);
    times.push(performance.now() - t);
  }
  return { ms: median(times), measured: times.length };
}

function peakBytes(trainer: Trainer): Promise<number> {
  return tf.profile(() => trainer.step(7)).then((info) => info.peakBytes);
}


async function main(): Promise<void> {
  const opts = program.parse(process.argv).opts<Options>();
  const presets = opts.presets.split(',').map((s) => s.trim());
  const tokens = opts.batch * opts.seq;
  const batch = mlmBatch(1, opts.batch, opts.seq, opts.vocab);
  const results: Record<string, unknown> = {
    setup: { vocab: opts.vocab, batch: opts.batch, seq: opts.seq, dropout: 0.1, optimizer: 'global-norm clip + SGD', targets: '15% of tokens' },
  };

  // 1. throughput
  const throughput: Record<string, Record<string, number | null>> = {};
  const rows: (string | number)[][] = [];
  for (const wanted of opts.backends.split(',').map((s) => s.trim()) as BackendName[]) {
    let backend: BackendName;
    try {
      backend = (await selectBackend(wanted)).name;
    } catch (err) {
      console.log(`skipping backend ${wanted}: ${(err as Error).message}`);
      continue;
    }
    throughput[backend] = {};
    let previousMs = 0;
    for (const preset of presets) {
      if (backend === 'cpu' && previousMs > CPU_SKIP_AFTER_MS) {
        // a bigger model would take minutes per step; the cpu backend is for tests, not training
        throughput[backend]![preset] = null;
        rows.push([backend, preset, 'skipped', '-', 0]);
        console.log(`  ${backend} ${preset}: skipped (the previous size took ${(previousMs / 1000).toFixed(0)} s per step)`);
        continue;
      }
      const trainer = makeTrainer(preset, opts.vocab, batch, false);
      const slow = backend === 'cpu';
      const { ms, measured } = timeSteps(trainer, slow ? 1 : 2, slow ? 2 : opts.steps, slow ? 20_000 : Infinity);
      trainer.dispose();
      previousMs = ms;
      const perSec = (tokens / ms) * 1000;
      throughput[backend]![preset] = Math.round(perSec);
      rows.push([backend, preset, ms.toFixed(0), perSec.toFixed(0), measured]);
      console.log(`  ${backend} ${preset}: ${ms.toFixed(0)} ms/step, ${perSec.toFixed(0)} tokens/s`);
    }
  }
  table(`MLM training step, batch ${opts.batch} x ${opts.seq}, vocab ${opts.vocab}, median after warm-up`, ['backend', 'model', 'ms/step', 'tokens/s', 'steps'], rows);
  results['trainTokensPerSec'] = throughput;

  // 2. our wasm kernels against stock tfjs-backend-wasm (plus the one kernel it lacks to train at all)
  if (opts.stock) {
    await selectBackend('wasm');
    const preset = 'L4-H256';
    const ours = makeTrainer(preset, opts.vocab, batch, false);
    const oursTime = timeSteps(ours, 1, 3);
    ours.dispose();
    uninstallWasmKernelFixes();
    installWasmKernelFixes(['UnsortedSegmentSum']);
    const stock = makeTrainer(preset, opts.vocab, batch, false);
    const stockTime = timeSteps(stock, 1, 2);
    stock.dispose();
    uninstallWasmKernelFixes();
    installWasmKernelFixes(ALL_WASM_KERNEL_FIXES);
    const speedup = stockTime.ms / oursTime.ms;
    table(`wasm ${preset}: our kernels vs stock tfjs-backend-wasm 4.22 (+ UnsortedSegmentSum only)`, ['kernels', 'ms/step', 'tokens/s'], [
      ['stock + UnsortedSegmentSum', stockTime.ms.toFixed(0), ((tokens / stockTime.ms) * 1000).toFixed(0)],
      [`ours (${ALL_WASM_KERNEL_FIXES.join(', ')})`, oursTime.ms.toFixed(0), ((tokens / oursTime.ms) * 1000).toFixed(0)],
    ]);
    results['wasmSpeedupOverStock'] = Number(speedup.toFixed(2));
  }

  // 3. recompute: peak memory by depth, batch that fits a budget, time overhead
  if (opts.recompute) {
    await selectBackend('wasm');
    const hidden = opts.recomputeHidden;
    const peaks: Record<string, { plain: number; recompute: number }> = {};
    const peakRows: (string | number)[][] = [];
    for (const layers of [4, 8, 12]) {
      const preset = `L${layers}-H${hidden}`;
      const plain = makeTrainer(preset, opts.vocab, batch, false);
      const plainPeak = await peakBytes(plain);
      plain.dispose();
      const rc = makeTrainer(preset, opts.vocab, batch, true);
      const rcPeak = await peakBytes(rc);
      rc.dispose();
      peaks[preset] = { plain: plainPeak, recompute: rcPeak };
      peakRows.push([preset, mib(plainPeak), mib(rcPeak), (plainPeak / rcPeak).toFixed(2)]);
    }
    table(`Peak tensor memory of one training step (MiB), batch ${opts.batch} x ${opts.seq}, wasm`, ['model', 'plain', 'recompute', 'ratio'], peakRows);

    // peak bytes are affine in the batch size: fit them from two batches, then solve for the budget
    const preset = `L${opts.recomputeLayers}-H${hidden}`;
    const budget = opts.budgetMib * 2 ** 20;
    const fit = async (recompute: boolean): Promise<{ fixed: number; perSample: number }> => {
      const at = async (b: number): Promise<number> => {
        const t = makeTrainer(preset, opts.vocab, mlmBatch(2, b, opts.seq, opts.vocab), recompute);
        const p = await peakBytes(t);
        t.dispose();
        return p;
      };
      // the peak is the largest of several phases, each affine in the batch; the larger
      // batches are where the steepest one (which rules the budget) already dominates
      const [p8, p16] = [await at(8), await at(16)];
      const perSample = (p16 - p8) / 8;
      return { fixed: p8 - 8 * perSample, perSample };
    };
    const plainFit = await fit(false);
    const rcFit = await fit(true);
    const maxBatch = (f: { fixed: number; perSample: number }): number => Math.floor((budget - f.fixed) / f.perSample);
    const plainMax = maxBatch(plainFit);
    const rcMax = maxBatch(rcFit);
    // measure both at their predicted largest batch: that is the figure, the fit only finds it
    const measureAt = async (b: number, recompute: boolean): Promise<number> => {
      const t = makeTrainer(preset, opts.vocab, mlmBatch(3, b, opts.seq, opts.vocab), recompute);
      const p = await peakBytes(t);
      t.dispose();
      return p;
    };
    const fitsBudget = async (start: number, recompute: boolean): Promise<{ batch: number; peak: number }> => {
      let b = Math.max(1, start);
      let peak = await measureAt(b, recompute);
      while (peak > budget && b > 1) {
        b = Math.max(1, Math.floor(b * 0.9));
        peak = await measureAt(b, recompute);
      }
      return { batch: b, peak };
    };
    const plainFits = await fitsBudget(plainMax, false);
    const rcFits = await fitsBudget(rcMax, true);
    // alternate plain and recompute steps, so that a slower or faster spell of this shared
    // machine lands on both
    const plainTrainer = makeTrainer(preset, opts.vocab, batch, false);
    const rcTrainer = makeTrainer(preset, opts.vocab, batch, true);
    plainTrainer.step(1000);
    rcTrainer.step(1000);
    const plainTimes: number[] = [];
    const rcTimes: number[] = [];
    for (let i = 0; i < 4; i++) {
      for (const [trainer, times] of [[plainTrainer, plainTimes], [rcTrainer, rcTimes]] as const) {
        const t = performance.now();
        trainer.step(i);
        times.push(performance.now() - t);
      }
    }
    plainTrainer.dispose();
    rcTrainer.dispose();
    const plainTime = { ms: median(plainTimes) };
    const rcTime = { ms: median(rcTimes) };
    const overhead = rcTime.ms / plainTime.ms - 1;
    table(`Recompute, ${preset}, seq ${opts.seq}, budget ${opts.budgetMib} MiB of tensors, wasm`, ['mode', 'fixed MiB', 'MiB/sample', 'max batch', 'its peak MiB', 'ms/sample'], [
      ['plain', mib(plainFit.fixed), mib(plainFit.perSample), plainFits.batch, mib(plainFits.peak), (plainTime.ms / opts.batch).toFixed(0)],
      ['recompute', mib(rcFit.fixed), mib(rcFit.perSample), rcFits.batch, mib(rcFits.peak), (rcTime.ms / opts.batch).toFixed(0)],
    ]);
    results['recompute'] = {
      layers: opts.recomputeLayers,
      hidden,
      budgetMiB: opts.budgetMib,
      maxBatch: { plain: plainFits.batch, recompute: rcFits.batch },
      peakAtMaxBatch: { plain: plainFits.peak, recompute: rcFits.peak },
      batchRatio: Number((rcFits.batch / plainFits.batch).toFixed(2)),
      timeOverhead: Number(overhead.toFixed(3)),
      peakBytes: Object.fromEntries(Object.entries(peaks).map(([k, v]) => [k, v])),
    };
  }

  console.log(`\nreproduce: npm run bench:model -- ${process.argv.slice(2).join(' ')}`.trimEnd());
  console.log(JSON.stringify(results));
}

main().catch((err: unknown) => {
  console.error(`bench:model failed: ${(err as Error).stack ?? String(err)}`);
  process.exit(1);
});
