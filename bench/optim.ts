/**
 * npm run bench:optim -- optimizer state for BERT-base shapes, update time per step on
 * L4-H256, and BERT-base (L12-H768) training on wasm at batch 8 x 128 with recompute:
 * AdaFactor against Adam, each in its own process so each heap is its own.
 * Prints tables, the command to reproduce, and as its last line one JSON object.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { Command, Option } from 'commander';
import { selectBackend } from '../src/backend/index.js';
import type { WasmBackendLike } from '../src/backend/wasm/backend-types.js';
import { buildTransformer, disposeTransformer } from '../src/model/build.js';
import { type BertConfig, presetConfig } from '../src/model/config.js';
import { trainableWeights } from '../src/model/weights.js';
import { createOptimizer, HostParameters, type OptimizerConfig, VariableParameters } from '../src/optim/index.js';
import { clipByGlobalNorm } from '../src/train/gradients.js';
import { PretrainingObjective } from '../src/train/step.js';
import { Trainer } from '../src/train/trainer.js';
import { median, mib, mlmBatch, table } from './common.js';

interface Options {
  vocab: number;
  stateModel: string;
  updateModel: string;
  trainModel: string;
  updateSteps: number;
  bertBaseSteps: number;
  batch: number;
  seq: number;
  bertBase: boolean;
  child?: string;
}

const program = new Command('bench:optim')
  .description('optimizer state bytes (BERT-base shapes), update ms per step (L4-H256), BERT-base on wasm with AdaFactor vs Adam')
  .addOption(new Option('--vocab <n>', 'vocabulary size (21128 = Google Chinese BERT)').default(21128).argParser(Number))
  .option('--state-model <name>', 'model whose parameter shapes size the optimizer state: bert-base or L<layers>-H<hidden>', 'bert-base')
  .option('--update-model <name>', 'model the update time is measured on', 'L4-H256')
  .option('--train-model <name>', 'model trained with AdaFactor and with Adam on wasm', 'bert-base')
  .addOption(new Option('--update-steps <n>', 'measured optimizer updates per row').default(15).argParser(Number))
  .addOption(new Option('--bert-base-steps <n>', 'measured BERT-base training steps (after one warm-up step)').default(2).argParser(Number))
  .addOption(new Option('--batch <n>', 'BERT-base sequences per step').default(8).argParser(Number))
  .addOption(new Option('--seq <n>', 'BERT-base sequence length').default(128).argParser(Number))
  .option('--no-bert-base', 'skip the training runs (AdaFactor vs Adam)')
  .addOption(new Option('--child <optimizer>', 'internal: run one BERT-base measurement in this process').hideHelp());

/** The optimizers compared; LAMB is bert4keras's pretraining composition. */
const OPTIMIZERS: Record<string, OptimizerConfig> = {
  adam: { type: 'adam' },
  adafactor: { type: 'adafactor' },
  adafactorBeta1: { type: 'adafactor', beta1: 0.9 },
  lamb: { type: 'lamb', wrappers: [{ type: 'piecewiseLinear', schedule: { '3125': 1, '125000': 0 } }] },
  sgdMomentum: { type: 'sgd', momentum: 0.9 },
};

/** `bert-base` is the L12-H768 preset: 12 heads, FFN 3072, 512 positions, dropout 0.1, Google's BERT-base. */
function modelConfig(name: string, vocab: number): BertConfig {
  return presetConfig(name === 'bert-base' ? 'L12-H768' : name, vocab);
}

/** The wasm module's linear memory: it only grows, so its size is the run's peak, and it is capped at 4 GiB. */
function wasmHeapBytes(): number {
  return (tf.backend() as unknown as WasmBackendLike).wasm.HEAPU8.buffer.byteLength;
}

function seededArrays(shapes: readonly (readonly number[])[], seed: number): Float32Array[] {
  let state = seed >>> 0;
  return shapes.map((shape) =>
    Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
      return (state / 4294967296 - 0.5) * 1e-2;
    }),
  );
}

interface BertBaseResult {
  msPerStep: number;
  peakHeapBytes: number;
  peakRssBytes: number;
  optimizerStateBytes: number;
  loss: number[];
}

/** One optimizer on BERT-base, in this process: warm-up step, then median of the measured steps. */
async function bertBaseChild(name: string, opts: Options): Promise<void> {
  await selectBackend('wasm');
  const config = modelConfig(opts.trainModel, opts.vocab);
  const model = buildTransformer(config, { seed: 1 });
  const objective = new PretrainingObjective(model);
  const params = new VariableParameters(objective.weights);
  // tfjs's own Adam keeps its slots (and every temporary of the update) in the wasm heap: the baseline
  const tfjsAdam = name === 'tfjsAdam' ? tf.train.adam(1e-3, 0.9, 0.999, 1e-6) : undefined;
  const optimizer = createOptimizer(OPTIMIZERS[tfjsAdam ? 'adam' : name]!);
  const trainer = new Trainer({ objective, optimizer, params, clipNorm: 1, recompute: true });
  const times: number[] = [];
  const losses: number[] = [];
  let peakRss = process.memoryUsage().rss;
  try {
  for (let step = 0; step <= opts.bertBaseSteps; step++) {
    const batch = mlmBatch(step, opts.batch, opts.seq, opts.vocab);
    const t0 = performance.now();
    if (tfjsAdam) {
      // the baseline updates tensors in the heap, which the Trainer (host-side updates) does not do
      const { loss, grads } = objective.compute(batch, { dropoutSeed: step + 1, recompute: true });
      const clipped = clipByGlobalNorm(grads, 1);
      tf.dispose(grads);
      tfjsAdam.applyGradients(objective.weights.map((w, i) => ({ name: w.variable.name, tensor: clipped.grads[i]! })));
      tf.dispose(clipped.grads);
      losses.push(loss);
    } else {
      losses.push((await trainer.step(batch, { dropoutSeed: step + 1 })).loss);
    }
    if (step > 0) times.push(performance.now() - t0);
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
  }
  } catch (err) {
    // wasm reports an exhausted heap as a failed allocation or an out-of-bounds access
    console.log(JSON.stringify({ failed: (err as Error).message, heapBytes: wasmHeapBytes(), step: times.length }));
    return;
  }
  const result: BertBaseResult = { msPerStep: median(times), peakHeapBytes: wasmHeapBytes(), peakRssBytes: peakRss, optimizerStateBytes: tfjsAdam ? 8 * objective.weights.reduce((n, w) => n + w.variable.size, 0) : optimizer.stateBytes(), loss: losses };
  disposeTransformer(model);
  console.log(JSON.stringify(result));
}

/** A wasm heap this close to its 4 GiB cap when a step fails means the step did not fit. */
const HEAP_FULL_BYTES = 3.5 * 2 ** 30;

function runChild(name: string, opts: Options): Promise<BertBaseResult | 'out of memory' | string> {
  const script = fileURLToPath(import.meta.url);
  const args = [script, '--child', name, '--train-model', opts.trainModel, '--vocab', String(opts.vocab), '--bert-base-steps', String(opts.bertBaseSteps), '--batch', String(opts.batch), '--seq', String(opts.seq)];
  return new Promise((resolve) => {
    execFile(process.execPath, args, { maxBuffer: 1 << 24 }, (err, stdout, stderr) => {
      const last = stdout.trim().split('\n').pop() ?? '';
      if (!err && last.startsWith('{')) {
        const parsed = JSON.parse(last) as BertBaseResult | { failed: string; heapBytes: number; step: number };
        if (!('failed' in parsed)) return resolve(parsed);
        if (parsed.heapBytes >= HEAP_FULL_BYTES) return resolve('out of memory');
        return resolve(`failed at step ${parsed.step} with a ${mib(parsed.heapBytes)} MiB heap: ${parsed.failed}`);
      }
      const text = `${stderr}\n${stdout}`;
      if (/OOM|out of memory|Cannot enlarge memory|Array buffer allocation failed|RangeError: .*[Mm]emory/.test(text)) return resolve('out of memory');
      resolve(`failed: ${(text.trim().split('\n').filter(Boolean).pop() ?? String(err)).slice(0, 200)}`);
    });
  });
}

async function main(): Promise<void> {
  const opts = program.parse(process.argv).opts<Options>();
  if (opts.child) return bertBaseChild(opts.child, opts);
  await selectBackend('wasm');

  // 1. state bytes for the real parameter shapes (BERT-base: about 102M parameters)
  const stateModel = buildTransformer(modelConfig(opts.stateModel, opts.vocab), { seed: 1 });
  const bertShapes = trainableWeights(stateModel).map((w) => ({ name: w.name, shape: w.shape }));
  disposeTransformer(stateModel);
  const parameters = bertShapes.reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0);
  const stateBytes: Record<string, number> = {};
  for (const [name, config] of Object.entries(OPTIMIZERS)) stateBytes[name] = createOptimizer(config).stateBytesFor(bertShapes);
  table(
    `Optimizer state for ${opts.stateModel} shapes (${(parameters / 1e6).toFixed(1)}M parameters, vocab ${opts.vocab})`,
    ['optimizer', 'state MiB', 'vs Adam', 'vs parameters'],
    Object.entries(stateBytes).map(([name, bytes]) => [name, mib(bytes), `${((100 * bytes) / stateBytes.adam!).toFixed(2)}%`, `${(bytes / (4 * parameters)).toFixed(3)}x`]),
  );

  // 2. update time on L4-H256: through the model's variables (what training pays) and on host arrays (the arithmetic alone)
  const small = buildTransformer(modelConfig(opts.updateModel, opts.vocab), { seed: 1 });
  const weights = trainableWeights(small);
  const grads = seededArrays(weights.map((w) => w.shape), 7);
  const updateMsPerStep: Record<string, number> = {};
  const updateRows: (string | number)[][] = [];
  const smallParameters = weights.reduce((n, w) => n + w.variable.size, 0);
  for (const [name, config] of Object.entries(OPTIMIZERS)) {
    const timeIt = (access: VariableParameters | HostParameters): number => {
      const optimizer = createOptimizer(config);
      optimizer.apply(access, grads);
      const times: number[] = [];
      for (let i = 0; i < opts.updateSteps; i++) {
        const t = performance.now();
        optimizer.apply(access, grads);
        times.push(performance.now() - t);
      }
      return median(times);
    };
    const variables = timeIt(new VariableParameters(weights));
    const host = timeIt(new HostParameters(weights.map((w) => ({ name: w.name, shape: w.shape, values: new Float32Array(w.variable.dataSync() as Float32Array) }))));
    updateMsPerStep[name] = Math.round(variables * 10) / 10;
    updateRows.push([name, variables.toFixed(1), host.toFixed(1), (smallParameters / host / 1e3).toFixed(0)]);
  }
  disposeTransformer(small);
  table(`Update time per step, ${opts.updateModel} (${(smallParameters / 1e6).toFixed(1)}M parameters), median of ${opts.updateSteps}`, ['optimizer', 'ms (model variables, wasm)', 'ms (host arrays)', 'Mparam/s (host)'], updateRows);

  // 3. BERT-base training on wasm, each optimizer in a fresh process
  const bertBase: Record<string, unknown> = {};
  if (opts.bertBase) {
    const rows: (string | number)[][] = [];
    for (const name of ['adafactor', 'adam', 'tfjsAdam']) {
      console.error(`${opts.trainModel} with ${name}: ${opts.bertBaseSteps + 1} steps at ${opts.batch} x ${opts.seq} with recompute ...`);
      const r = await runChild(name, opts);
      if (typeof r === 'string') {
        bertBase[name] = r;
        rows.push([name, r, '', '', '', '']);
      } else {
        bertBase[name] = { msPerStep: Math.round(r.msPerStep), peakHeapBytes: r.peakHeapBytes, peakRssBytes: r.peakRssBytes, optimizerStateBytes: r.optimizerStateBytes };
        rows.push([name, (r.msPerStep / 1000).toFixed(1), mib(r.peakHeapBytes), mib(r.peakRssBytes), mib(r.optimizerStateBytes), r.loss.map((l) => l.toFixed(3)).join(' ')]);
      }
    }
    table(`${opts.trainModel} (vocab ${opts.vocab}) on wasm, batch ${opts.batch} x ${opts.seq}, recompute, clip 1`, ['optimizer', 's/step', 'wasm heap MiB', 'process RSS MiB', 'state MiB', 'loss per step'], rows);
  }

  console.log(`\nreproduce: npm run bench:optim -- ${process.argv.slice(2).join(' ')}`.trimEnd());
  const models = { state: opts.stateModel, update: opts.updateModel, ...(opts.bertBase ? { train: opts.trainModel } : {}) };
  console.log(JSON.stringify({ stateBytes, updateMsPerStep, ...(opts.bertBase ? { bertBase } : {}), models }));
}

await main();
