import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { selectBackend } from '../src/backend/index.js';
import { buildTransformer, disposeTransformer } from '../src/model/build.js';
import { createOptimizer, type OptimizerConfig, VariableParameters } from '../src/optim/index.js';
import { PretrainingObjective } from '../src/train/step.js';
import { Trainer } from '../src/train/trainer.js';
import { mlmBatch, tinyConfig } from './helpers.js';

before(async () => {
  await selectBackend('cpu');
});

const CONFIGS: OptimizerConfig[] = [
  { type: 'adafactor', learningRate: 0.1 },
  { type: 'adafactor', learningRate: 0.1, beta1: 0.9, wrappers: [{ type: 'weightDecay' }, { type: 'ema' }] },
  { type: 'adam', learningRate: 1e-2 },
  { type: 'adamw', learningRate: 1e-2 },
  { type: 'lamb', learningRate: 2e-2, wrappers: [{ type: 'piecewiseLinear', schedule: { '3': 1 } }, { type: 'gradientAccumulation', steps: 2 }] },
  { type: 'sgd', learningRate: 0.5, momentum: 0.9, wrappers: [{ type: 'lookahead', k: 3 }, { type: 'lazy' }] },
];

describe('training the model with each optimizer', () => {
  for (const config of CONFIGS) {
    it(`the loss falls: ${JSON.stringify(config)}`, async () => {
      const cfg = tinyConfig();
      const model = buildTransformer(cfg, { application: 'encoder', withMlm: true, seed: 4 });
      const objective = new PretrainingObjective(model);
      const params = new VariableParameters(objective.weights);
      const optimizer = createOptimizer(config);
      const batch = mlmBatch(5, 4, 12, cfg.vocab_size);
      const trainer = new Trainer({ objective, optimizer, params, clipNorm: 1 });
      const losses: number[] = [];
      for (let step = 0; step < 24; step++) losses.push((await trainer.step(batch)).loss);
      assert.ok(losses[losses.length - 1]! < losses[0]! - 0.3, `loss ${losses[0]} -> ${losses[losses.length - 1]} (${losses.map((l) => l.toFixed(2)).join(' ')})`);
      disposeTransformer(model);
    });
  }
});
