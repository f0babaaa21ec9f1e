import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../src/backend/index.js';
import { loadModel, saveModel } from '../src/checkpoint/layers-model-io.js';
import { readSafetensors, SafetensorsError, writeSafetensors } from '../src/checkpoint/safetensors.js';
import { buildTransformer, disposeTransformer } from '../src/model/build.js';
import { createOptimizer, HostParameters, loadOptimizerState, type OptimizerConfig, OptimizerError, saveOptimizerState, VariableParameters } from '../src/optim/index.js';
import { PretrainingObjective } from '../src/train/step.js';
import { lcg, mlmBatch, tinyConfig } from './helpers.js';

let dir: string;
before(async () => {
  await selectBackend('cpu');
  dir = await mkdtemp(path.join(tmpdir(), 'optim-state-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Every slot kind at once: factored and unfactored AdaFactor with beta1, all update wrappers, accumulation mid-way, EMA. */
const EVERYTHING: OptimizerConfig = {
  type: 'adafactor',
  beta1: 0.9,
  learningRate: null,
  wrappers: [
    { type: 'weightDecay', rate: 0.01 },
    { type: 'layerAdaptation' },
    { type: 'lazy', include: ['Embedding'] },
    { type: 'lookahead', k: 3 },
    { type: 'parameterWiseLr', multipliers: { Embedding: 0.5 } },
    { type: 'piecewiseLinear', schedule: { '2': 1, '10': 0.5 } },
    { type: 'gradientAccumulation', steps: 2 },
    { type: 'ema', momentum: 0.9 },
  ],
};

function hostModel(seed: number) {
  const rand = lcg(seed);
  const shapes: [string, number[]][] = [
    ['Embedding-Token/embeddings', [140, 130]],
    ['Transformer-0-FeedForward/kernel', [130, 4]],
    ['Transformer-0-FeedForward/bias', [4]],
    ['Transformer-0-FeedForward-Norm/gamma', [4]],
  ];
  return shapes.map(([name, shape]) => ({ name, shape, values: Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rand() - 0.5) }));
}

function hostGrads(params: ReturnType<typeof hostModel>, step: number) {
  const rand = lcg(1000 + step);
  return params.map((p) =>
    p.values.map((_, j) => {
      // rows 3 and 7 of the embedding idle, so lazy optimization has work
      if (p.name.startsWith('Embedding') && (Math.floor(j / 130) === 3 || Math.floor(j / 130) === 7)) return 0;
      return rand() - 0.5;
    }),
  );
}

describe('optimizer state', () => {
  it('round-trips through a safetensors file and continues bit for bit (mid-accumulation, every slot kind)', async () => {
    const straight = hostModel(1);
    const straightOpt = createOptimizer(EVERYTHING);
    for (let s = 0; s < 16; s++) straightOpt.apply(new HostParameters(straight), hostGrads(straight, s));

    const first = hostModel(1);
    const firstOpt = createOptimizer(EVERYTHING);
    for (let s = 0; s < 7; s++) firstOpt.apply(new HostParameters(first), hostGrads(first, s));
    const state = firstOpt.getState();
    assert.equal(state.iterations, 3);
    assert.equal(state.microSteps, 1, 'saved in the middle of an accumulation');
    const kinds = new Set(state.slots.map((s) => s.name.split('#')[1]));
    for (const kind of ['adafactor/vr', 'adafactor/vc', 'adafactor/v', 'adafactor/m', 'lookahead/slow', 'gradientAccumulation/sum', 'ema/average']) assert.ok(kinds.has(kind), kind);
    const file = path.join(dir, 'optimizer.safetensors');
    await saveOptimizerState(file, state);

    const resumed = first.map((p) => ({ ...p, values: new Float32Array(p.values) }));
    const resumedOpt = createOptimizer(EVERYTHING);
    resumedOpt.setState(await loadOptimizerState(file));
    for (let s = 7; s < 16; s++) resumedOpt.apply(new HostParameters(resumed), hostGrads(resumed, s));
    resumed.forEach((p, i) => assert.deepEqual(p.values, straight[i]!.values, p.name));
    assert.deepEqual(resumedOpt.getState(), straightOpt.getState());
  });

  it('counts the state bytes it declares, and AdaFactor keeps m+n floats for an m x n matrix', () => {
    const params = hostModel(2);
    const shapes = params.map((p) => ({ name: p.name, shape: p.shape }));
    for (const config of [EVERYTHING, { type: 'adam' } as const, { type: 'adafactor' } as const, { type: 'sgd', momentum: 0.9 } as const]) {
      const opt = createOptimizer(config);
      opt.apply(new HostParameters(params), hostGrads(params, 0));
      assert.equal(opt.stateBytes(), opt.stateBytesFor(shapes), JSON.stringify(config));
    }
    const adafactor = createOptimizer({ type: 'adafactor' });
    assert.equal(adafactor.stateBytesFor([{ name: 'w', shape: [768, 3072] }]), 4 * (768 + 3072));
    assert.equal(createOptimizer({ type: 'adam' }).stateBytesFor([{ name: 'w', shape: [768, 3072] }]), 4 * 2 * 768 * 3072);
  });

  it('refuses state from a different composition, a slot of the wrong shape, or a parameter the model lacks', () => {
    const params = hostModel(3);
    const opt = createOptimizer({ type: 'adam' });
    opt.apply(new HostParameters(params), hostGrads(params, 0));
    const state = opt.getState();
    assert.throws(() => createOptimizer({ type: 'adamw' }).setState(state), /saved by "adam" and cannot load into "adam > weightDecay"/);

    const badShape = createOptimizer({ type: 'adam' });
    badShape.setState({ ...state, slots: state.slots.map((s) => (s.name === 'Transformer-0-FeedForward/bias#adam/m' ? { ...s, shape: [2, 2] } : s)) });
    assert.throws(() => badShape.apply(new HostParameters(params), hostGrads(params, 1)), /Transformer-0-FeedForward\/bias#adam\/m has shape \[2, 2\], expected \[4\]/);

    const stranger = createOptimizer({ type: 'adam' });
    stranger.setState({ ...state, slots: [...state.slots, { name: 'Pooler/kernel#adam/m', shape: [1], data: new Float32Array(1) }] });
    assert.throws(() => stranger.apply(new HostParameters(params), hostGrads(params, 1)), /slots for Pooler\/kernel, which this model does not have/);

    assert.throws(() => createOptimizer({ type: 'adam' }).setState({ ...state, slots: [{ name: 'no-separator', shape: [1], data: new Float32Array(1) }] }), /not named <parameter>#<component>\/<slot>/);
    assert.throws(() => createOptimizer({ type: 'adam', wrappers: [{ type: 'gradientAccumulation', steps: 2 }] }).setState({ ...state, components: ['adam', 'gradientAccumulation'], microSteps: 2 }), OptimizerError);
  });

  it('checks everything before changing anything: a bad slot of the last parameter or a non-finite gradient leaves all parameters as they were', () => {
    const params = hostModel(4);
    const opt = createOptimizer({ type: 'adam' });
    opt.apply(new HostParameters(params), hostGrads(params, 0));
    const state = opt.getState();
    const before = params.map((p) => new Float32Array(p.values));
    const restored = createOptimizer({ type: 'adam' });
    restored.setState({ ...state, slots: state.slots.map((s) => (s.name === 'Transformer-0-FeedForward-Norm/gamma#adam/v' ? { ...s, shape: [2, 2] } : s)) });
    assert.throws(() => restored.apply(new HostParameters(params), hostGrads(params, 1)), (err: Error) => err instanceof OptimizerError && /gamma#adam\/v has shape \[2, 2\]/.test(err.message));
    params.forEach((p, i) => assert.deepEqual(p.values, before[i], `${p.name} untouched`));
    assert.equal(restored.completedSteps, 1);

    const grads = hostGrads(params, 1);
    grads[2]![1] = NaN;
    assert.throws(() => opt.apply(new HostParameters(params), grads), /gradient of Transformer-0-FeedForward\/bias is not finite \(NaN at index 1\); nothing was updated/);
    grads[2]![1] = Infinity;
    assert.throws(() => opt.apply(new HostParameters(params), grads), /not finite \(Infinity at index 1\)/);
    params.forEach((p, i) => assert.deepEqual(p.values, before[i], `${p.name} untouched`));
    assert.equal(opt.completedSteps, 1);
    assert.deepEqual(opt.getState(), state, 'no slot changed');
  });

  it('refuses a restored state that lacks a parameter, or a state load while the EMA weights are applied', () => {
    const params = hostModel(5);
    const opt = createOptimizer({ type: 'adam', wrappers: [{ type: 'ema' }] });
    opt.apply(new HostParameters(params), hostGrads(params, 0));
    const state = opt.getState();
    const partial = createOptimizer({ type: 'adam', wrappers: [{ type: 'ema' }] });
    partial.setState({ ...state, slots: state.slots.filter((s) => !s.name.startsWith('Transformer-0-FeedForward/kernel#')) });
    assert.throws(() => partial.apply(new HostParameters(params), hostGrads(params, 1)), /state \(after 1 steps\) has no slots for Transformer-0-FeedForward\/kernel/);
    opt.applyAverage(new HostParameters(params));
    assert.throws(() => opt.setState(state), /EMA weights are applied; call restoreTrained\(\) before loading/);
    opt.restoreTrained(new HostParameters(params));
    opt.setState(state);
  });

  it('names a truncated or foreign state file and what is wrong with it', async () => {
    const file = path.join(dir, 'truncated.safetensors');
    await writeSafetensors(file, [{ name: 'a#adam/m', shape: [4, 4], data: new Float32Array(16).fill(1) }], { format: 'tfjs-pretrain-optimizer/1', components: '["adam"]', iterations: '1', microSteps: '0' });
    const whole = await readSafetensors(file);
    assert.deepEqual(whole.tensors[0]!.data, new Float32Array(16).fill(1));
    await truncate(file, statSync(file).size - 8);
    await assert.rejects(loadOptimizerState(file), (err: Error) => err instanceof SafetensorsError && err.message.includes(file) && /a#adam\/m needs bytes up to \d+ but the file ends at \d+ \(truncated\?\)/.test(err.message));
    const garbage = path.join(dir, 'garbage.safetensors');
    await writeFile(garbage, Buffer.from([200, 0, 0, 0, 0, 0, 0, 0, 123]));
    await assert.rejects(loadOptimizerState(garbage), /garbage\.safetensors is not a valid safetensors file: the header claims 200 bytes but the file has 1/);
    const foreign = path.join(dir, 'foreign.safetensors');
    await writeSafetensors(foreign, [{ name: 'w', shape: [1], data: new Float32Array(1) }]);
    await assert.rejects(loadOptimizerState(foreign), /foreign\.safetensors is not an optimizer state of this program/);
    await assert.rejects(loadOptimizerState(path.join(dir, 'absent.safetensors')), /absent\.safetensors does not exist/);

    // hand-made headers: overlapping tensors, a gap, metadata that is not an object
    const handMade = async (name: string, header: object, dataBytes: number) => {
      const json = Buffer.from(JSON.stringify(header));
      const prefix = Buffer.alloc(8);
      prefix.writeBigUInt64LE(BigInt(json.length));
      const file = path.join(dir, name);
      await writeFile(file, Buffer.concat([prefix, json, Buffer.alloc(dataBytes)]));
      return file;
    };
    const f32 = (begin: number, end: number) => ({ dtype: 'F32', shape: [(end - begin) / 4], data_offsets: [begin, end] });
    await assert.rejects(readSafetensors(await handMade('overlap.safetensors', { a: f32(0, 8), b: f32(0, 8) }, 8)), /overlap\.safetensors .*tensor [ab] overlaps the tensor before it/);
    await assert.rejects(readSafetensors(await handMade('gap.safetensors', { a: f32(0, 4), b: f32(8, 12) }, 12)), /gap\.safetensors .*4 bytes before tensor b belong to no tensor/);
    await assert.rejects(readSafetensors(await handMade('meta.safetensors', { __metadata__: 'abc', a: f32(0, 4) }, 4)), /__metadata__ is not an object of strings/);
    await assert.rejects(readSafetensors(await handMade('dtype.safetensors', { a: { dtype: 'F16', shape: [2], data_offsets: [0, 4] } }, 4)), /tensor a has dtype F16/);
    const ok = await readSafetensors(await handMade('ok.safetensors', { b: f32(4, 8), a: f32(0, 4), __metadata__: { k: 'v' } }, 8));
    assert.deepEqual(ok.tensors.map((t) => t.name).sort(), ['a', 'b']);
    assert.deepEqual(ok.metadata, { k: 'v' });
  });
});

describe('resuming a model run on cpu', () => {
  for (const config of [{ type: 'lamb', learningRate: 1e-2 }, { type: 'adafactor', beta1: 0.9, wrappers: [{ type: 'lookahead', k: 2 }, { type: 'ema' }] }] as OptimizerConfig[]) {
    it(`${config.type}: saved model + optimizer state continue exactly like the uninterrupted run`, async () => {
      const cfg = tinyConfig({ hidden_dropout_prob: 0.1 });
      const batches = [0, 1, 2, 3, 4].map((s) => mlmBatch(40 + s, 2, 8, cfg.vocab_size));
      const train = (objective: PretrainingObjective, opt: ReturnType<typeof createOptimizer>, from: number, to: number) => {
        const params = new VariableParameters(objective.weights);
        for (let s = from; s < to; s++) {
          const { grads } = objective.compute(batches[s]!, { dropoutSeed: 100 + s });
          opt.apply(params, grads.map((g) => g.dataSync() as Float32Array));
          tf.dispose(grads);
        }
      };
      const straightModel = buildTransformer(cfg, { application: 'encoder', withMlm: true, seed: 9 });
      const straight = new PretrainingObjective(straightModel);
      train(straight, createOptimizer(config), 0, 5);

      const firstModel = buildTransformer(cfg, { application: 'encoder', withMlm: true, seed: 9 });
      const firstOpt = createOptimizer(config);
      train(new PretrainingObjective(firstModel), firstOpt, 0, 3);
      const saveDir = path.join(dir, `resume-${config.type}`);
      await saveModel(firstModel, saveDir);
      await saveOptimizerState(path.join(saveDir, 'optimizer.safetensors'), firstOpt.getState());
      disposeTransformer(firstModel);

      const resumedModel = await loadModel(saveDir);
      const resumedOpt = createOptimizer(config);
      resumedOpt.setState(await loadOptimizerState(path.join(saveDir, 'optimizer.safetensors')));
      const resumed = new PretrainingObjective(resumedModel);
      train(resumed, resumedOpt, 3, 5);
      const want = new Map(straight.weights.map((w) => [w.name, w.variable.dataSync()]));
      for (const w of resumed.weights) assert.deepEqual(w.variable.dataSync(), want.get(w.name), w.name);
      disposeTransformer(straightModel);
      disposeTransformer(resumedModel);
    });
  }
});
