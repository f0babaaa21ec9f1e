import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { selectBackend } from '../src/backend/index.js';
import { loadModel, saveModel } from '../src/checkpoint/layers-model-io.js';
import { buildTransformer, disposeTransformer } from '../src/model/build.js';
import { ConfigError, parseBertConfig } from '../src/model/config.js';
import { AttentionMask, LayerNorm, MASKED_SCORE, SeededDropout } from '../src/model/layers/index.js';
import { trainableWeights } from '../src/model/weights.js';
import { GraphExecutor } from '../src/train/graph-executor.js';
import { leanGradients } from '../src/train/lean-gradients.js';
import { PretrainingObjective, TrainingError } from '../src/train/step.js';
import { type Batch, nextTokenTargets, sliceBatch } from '../src/batch.js';
import { mlmBatch, tinyConfig } from './helpers.js';

before(async () => {
  await selectBackend('cpu');
});

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe('bert_config validation', () => {
  it('accepts a complete config', () => {
    assert.equal(parseBertConfig(tinyConfig()).hidden_size, 16);
  });
  it('names a missing field', () => {
    const { vocab_size: _, ...rest } = tinyConfig();
    assert.throws(() => parseBertConfig(rest, 'bert_config.json'), (e: Error) => e instanceof ConfigError && /bert_config\.json/.test(e.message) && /vocab_size: missing/.test(e.message));
  });
  it('says what is wrong with a value, not that it is missing', () => {
    const problem = (overrides: Record<string, unknown>): string => {
      try {
        parseBertConfig({ ...tinyConfig(), ...overrides }, 'c.json');
      } catch (e) {
        assert.ok(e instanceof ConfigError);
        return e.message.split('\n')[1]!.trim();
      }
      assert.fail('accepted');
    };
    assert.equal(problem({ hidden_size: '16' }), 'hidden_size: expected a positive integer, got the string "16"');
    assert.equal(problem({ hidden_size: 16.5 }), 'hidden_size: expected a positive integer, got 16.5');
    assert.equal(problem({ hidden_act: undefined }), 'hidden_act: missing (expected one of gelu, gelu_new, relu, swish, silu, tanh, linear)');
    assert.equal(problem({ hidden_act: 'gelu2' }), 'hidden_act: expected one of gelu, gelu_new, relu, swish, silu, tanh, linear, got the string "gelu2"');
    assert.equal(problem({ hidden_dropout_prob: 1 }), 'hidden_dropout_prob: expected a probability in [0, 1), got 1');
    assert.equal(problem({ num_hidden_layers: null }), 'num_hidden_layers: expected a positive integer, got null');
    assert.throws(() => parseBertConfig([1], 'c.json'), /expected a JSON object with the fields of bert_config\.json, got an array/);
  });
  it('rejects heads that do not divide the hidden size', () => {
    assert.throws(() => parseBertConfig(tinyConfig({ num_attention_heads: 3 })), /num_attention_heads must divide hidden_size/);
  });
  it('rejects an unknown activation', () => {
    assert.throws(() => parseBertConfig({ ...tinyConfig(), hidden_act: 'mish' }), /hidden_act: expected one of gelu, .*, got the string "mish"/);
  });
  it('rejects a dropout rate of 1', () => {
    assert.throws(() => parseBertConfig(tinyConfig({ hidden_dropout_prob: 1 })), /hidden_dropout_prob/);
  });
});

describe('graph', () => {
  it('has the stable layer and weight names and output shapes', () => {
    const model = buildTransformer(tinyConfig(), { seed: 7 });
    const names = model.layers.map((l) => l.name);
    for (const n of ['Embedding-Token', 'Embedding-Segment', 'Embedding-Position', 'Embedding-Norm', 'Transformer-1-MultiHeadSelfAttention', 'Transformer-1-FeedForward-Norm', 'MLM-Dense', 'MLM-Norm', 'MLM-Bias']) {
      assert.ok(names.includes(n), `missing layer ${n}`);
    }
    const weights = trainableWeights(model).map((w) => w.name);
    assert.ok(weights.includes('Transformer-0-FeedForward/output/kernel'));
    assert.ok(weights.includes('Transformer-1-MultiHeadSelfAttention/query/kernel'));
    assert.ok(weights.includes('Embedding-Token/embeddings'));
    // a second model in the same process keeps the same names
    assert.deepEqual(trainableWeights(buildTransformer(tinyConfig(), { seed: 7 })).map((w) => w.name), weights);
    const out = model.predict([tf.ones([2, 7], 'int32'), tf.zeros([2, 7], 'int32')]) as tf.Tensor;
    assert.deepEqual(out.shape, [2, 7, 40]);
    const encoder = buildTransformer(tinyConfig(), { withMlm: false, seed: 7 });
    const hidden = encoder.predict([tf.ones([3, 5], 'int32'), tf.zeros([3, 5], 'int32')]) as tf.Tensor;
    assert.deepEqual(hidden.shape, [3, 5, 16]);
  });

  it('a seeded build is reproducible, and its weights are distinct and BERT-initialised', () => {
    const a = trainableWeights(buildTransformer(tinyConfig(), { seed: 7 }));
    const b = trainableWeights(buildTransformer(tinyConfig(), { seed: 7 }));
    const c = trainableWeights(buildTransformer(tinyConfig(), { seed: 8 }));
    a.forEach((w, i) => assert.deepEqual(w.variable.dataSync(), b[i]!.variable.dataSync(), w.name));
    const kernel = (ws: typeof a, name: string): Float32Array => ws.find((w) => w.name === name)!.variable.dataSync() as Float32Array;
    assert.notDeepEqual(kernel(a, 'Transformer-0-MultiHeadSelfAttention/query/kernel'), kernel(c, 'Transformer-0-MultiHeadSelfAttention/query/kernel'));
    assert.notDeepEqual(kernel(a, 'Transformer-0-MultiHeadSelfAttention/query/kernel'), kernel(a, 'Transformer-0-MultiHeadSelfAttention/key/kernel'));
    assert.notDeepEqual(kernel(a, 'Transformer-0-FeedForward/intermediate/kernel').slice(0, 16), kernel(a, 'Transformer-1-FeedForward/intermediate/kernel').slice(0, 16));
    const values = Array.from(kernel(a, 'Embedding-Token/embeddings'));
    const std = Math.sqrt(values.reduce((s, v) => s + v * v, 0) / values.length);
    assert.ok(Math.max(...values.map(Math.abs)) <= 2 * 0.02 + 1e-6, 'truncated at two standard deviations');
    assert.ok(std > 0.012 && std < 0.02, `standard deviation ${std}`);
  });

  it('disposeTransformer frees every tensor, the tied embedding included', () => {
    const before = tf.memory().numTensors;
    const model = buildTransformer(tinyConfig(), { seed: 1 });
    assert.ok(tf.memory().numTensors > before);
    disposeTransformer(model);
    assert.equal(tf.memory().numTensors, before);
  });

  it('builds the UniLM, causal and padding masks', () => {
    const tokens = tf.tensor2d([[1, 2, 3, 4, 5, 0]], [1, 6], 'int32');
    const segments = tf.tensor2d([[0, 0, 0, 1, 1, 0]], [1, 6], 'int32');
    const allowed = (kind: 'padding' | 'unilm' | 'causal'): number[][] => {
      const bias = new AttentionMask({ kind }).call([tokens, segments]) as tf.Tensor;
      const full = tf.broadcastTo(bias, [1, 1, 6, 6]).arraySync() as number[][][][];
      return full[0]![0]!.map((row) => row.map((v) => (v === 0 ? 1 : (assert.equal(v, MASKED_SCORE), 0))));
    };
    assert.deepEqual(allowed('unilm'), [
      [1, 1, 1, 0, 0, 0],
      [1, 1, 1, 0, 0, 0],
      [1, 1, 1, 0, 0, 0],
      [1, 1, 1, 1, 0, 0],
      [1, 1, 1, 1, 1, 0],
      [1, 1, 1, 1, 1, 0], // a padding query's row is never used
    ]);
    assert.deepEqual(allowed('causal'), [
      [1, 0, 0, 0, 0, 0],
      [1, 1, 0, 0, 0, 0],
      [1, 1, 1, 0, 0, 0],
      [1, 1, 1, 1, 0, 0],
      [1, 1, 1, 1, 1, 0],
      [1, 1, 1, 1, 1, 0],
    ]);
    assert.deepEqual(allowed('padding'), Array.from({ length: 6 }, () => [1, 1, 1, 1, 1, 0]));
  });

  it('ignores padding: outputs at real positions do not depend on what is padded', () => {
    const model = buildTransformer(tinyConfig(), { withMlm: false, seed: 7 });
    const a = model.predict([tf.tensor2d([[7, 8, 9, 0, 0]], [1, 5], 'int32'), tf.zeros([1, 5], 'int32')]) as tf.Tensor;
    const b = model.predict([tf.tensor2d([[7, 8, 9, 0]], [1, 4], 'int32'), tf.zeros([1, 4], 'int32')]) as tf.Tensor;
    assert.ok(maxAbsDiff(tf.slice(a, [0, 0, 0], [1, 3, 16]).dataSync(), tf.slice(b, [0, 0, 0], [1, 3, 16]).dataSync()) < 1e-5);
  });

  it('the causal model never looks ahead', () => {
    const model = buildTransformer(tinyConfig(), { application: 'lm', withMlm: false, seed: 7 });
    const a = model.predict([tf.tensor2d([[7, 8, 9, 10]], [1, 4], 'int32'), tf.zeros([1, 4], 'int32')]) as tf.Tensor;
    const b = model.predict([tf.tensor2d([[7, 8, 11, 12]], [1, 4], 'int32'), tf.zeros([1, 4], 'int32')]) as tf.Tensor;
    assert.ok(maxAbsDiff(tf.slice(a, [0, 0, 0], [1, 2, 16]).dataSync(), tf.slice(b, [0, 0, 0], [1, 2, 16]).dataSync()) < 1e-6);
    assert.ok(maxAbsDiff(tf.slice(a, [0, 2, 0], [1, 1, 16]).dataSync(), tf.slice(b, [0, 2, 0], [1, 1, 16]).dataSync()) > 1e-4);
  });

  it('the executor computes what LayersModel.predict computes', () => {
    const model = buildTransformer(tinyConfig(), { seed: 7 });
    const batch = mlmBatch(3, 2, 8, 40);
    const feeds = [tf.tensor2d(batch.tokenIds, [2, 8], 'int32'), tf.tensor2d(batch.segmentIds, [2, 8], 'int32')];
    const [viaExecutor] = new GraphExecutor(model).run(feeds, ['MLM-Activation'], { training: false });
    const viaPredict = model.predict(feeds) as tf.Tensor;
    assert.ok(maxAbsDiff(viaExecutor!.dataSync(), viaPredict.dataSync()) < 1e-6);
  });

  it('unilm and lm targets are the next token (unilm: target side only)', () => {
    const tokens = Int32Array.from([2, 10, 11, 3, 12, 13, 3, 0]);
    const segments = Int32Array.from([0, 0, 0, 0, 1, 1, 1, 0]);
    assert.deepEqual([...nextTokenTargets('unilm', 1, 8, tokens, segments)], [0, 0, 0, 12, 13, 3, 0, 0]);
    assert.deepEqual([...nextTokenTargets('lm', 1, 8, tokens, segments)], [10, 11, 3, 12, 13, 3, 0, 0]);
  });
});

describe('gradients', () => {
  it('match central finite differences', () => {
    const config = tinyConfig({ initializer_range: 0.2, num_hidden_layers: 1, hidden_size: 8, intermediate_size: 16, vocab_size: 20 });
    const model = buildTransformer(config, { seed: 7 });
    const objective = new PretrainingObjective(model);
    const batch = mlmBatch(11, 2, 6, 20);
    const { grads, loss } = objective.compute(batch);
    assert.ok(Number.isFinite(loss));
    const eps = 1e-2;
    let checked = 0;
    objective.weights.forEach((w, wi) => {
      const values = w.variable.dataSync().slice() as Float32Array;
      const g = grads[wi]!.dataSync();
      // the largest-gradient entry of every weight, so each check is far above float32 noise
      let k = 0;
      for (let i = 1; i < g.length; i++) if (Math.abs(g[i]!) > Math.abs(g[k]!)) k = i;
      if (Math.abs(g[k]!) < 1e-3) return;
      const at = (delta: number): number => {
        const copy = values.slice();
        copy[k] = values[k]! + delta;
        w.variable.assign(tf.tensor(copy, [...w.shape]));
        return objective.evaluate(batch).loss;
      };
      const numeric = (at(eps) - at(-eps)) / (2 * eps);
      w.variable.assign(tf.tensor(values, [...w.shape]));
      assert.ok(Math.abs(numeric - g[k]!) <= 2e-3 + 0.03 * Math.abs(g[k]!), `${w.name}[${k}]: analytic ${g[k]} vs numeric ${numeric}`);
      checked++;
    });
    assert.ok(checked >= 15, `only ${checked} weights had a gradient to check`);
    tf.dispose(grads);
  });

  for (const application of ['encoder', 'unilm'] as const) {
    it(`with recompute equal those without (${application}, dropout on)`, () => {
      const config = tinyConfig({ hidden_dropout_prob: 0.1, attention_probs_dropout_prob: 0.1, num_hidden_layers: 3 });
      const model = buildTransformer(config, { application, seed: 7 });
      const objective = new PretrainingObjective(model);
      let batch = mlmBatch(5, 3, 10, 40);
      if (application === 'unilm') batch = { ...batch, tokenIds: batch.targets.map((t, i) => t || batch.tokenIds[i]!), targets: nextTokenTargets('unilm', 3, 10, batch.targets.map((t, i) => t || batch.tokenIds[i]!), batch.segmentIds) };
      const before = tf.memory().numTensors;
      const plain = objective.compute(batch, { dropoutSeed: 42 });
      const recomputed = objective.compute(batch, { dropoutSeed: 42, recompute: true });
      const otherMask = objective.compute(batch, { dropoutSeed: 43 });
      assert.ok(Math.abs(plain.loss - recomputed.loss) < 1e-6);
      let worst = 0;
      let differs = 0;
      plain.grads.forEach((g, i) => {
        worst = Math.max(worst, maxAbsDiff(g.dataSync(), recomputed.grads[i]!.dataSync()));
        differs = Math.max(differs, maxAbsDiff(g.dataSync(), otherMask.grads[i]!.dataSync()));
      });
      assert.ok(worst <= 1e-5, `max abs gradient difference ${worst}`);
      assert.ok(differs > 1e-4, 'a different dropout seed should change the gradients (dropout is really on)');
      tf.dispose([...plain.grads, ...recomputed.grads, ...otherMask.grads]);
      assert.equal(tf.memory().numTensors, before, 'the step leaked tensors');
    });
  }

  it('recompute runs every matmul of a recomputed block again except the output projection of its feed-forward', async () => {
    const layers = 3;
    const model = buildTransformer(tinyConfig({ num_hidden_layers: layers }), { seed: 7 });
    const objective = new PretrainingObjective(model);
    const batch = mlmBatch(6, 2, 8, 40);
    const matmuls = async (recompute: boolean): Promise<number> => {
      const info = await tf.profile(() => tf.dispose(objective.compute(batch, { dropoutSeed: 1, recompute }).grads));
      return info.kernels.filter((k) => k.name === 'BatchMatMul').length;
    };
    const plain = await matmuls(false);
    const recomputed = await matmuls(true);
    // a block's forward pass has 8 (query, key, value, scores, context, output, and the
    // feed-forward's two); the last block is never recomputed
    assert.equal(recomputed - plain, (layers - 1) * 7);
    disposeTransformer(model);
  });

  it('recompute of blocks whose layers hand back their input (dropout off) equals the plain pass, leaking nothing', () => {
    const input = tfl.input({ shape: [4], name: 'in' });
    let x = tfl.layers.dense({ units: 4, name: 'pre', kernelInitializer: tfl.initializers.glorotUniform({ seed: 1 }) }).apply(input) as tfl.SymbolicTensor;
    for (let i = 0; i < 3; i++) {
      // body: a dropout at rate 0 (returns its input); tail: the norm
      x = new SeededDropout({ name: `Transformer-${i}-Dropout`, rate: 0 }).apply(x) as tfl.SymbolicTensor;
      x = new LayerNorm({ name: `Transformer-${i}-Norm` }).apply(x) as tfl.SymbolicTensor;
    }
    const model = tfl.model({ inputs: input, outputs: x });
    const executor = new GraphExecutor(model);
    const feed = tf.tensor2d([0.3, -1, 2, 0.5, 1, 1, -2, 0, 0.1, 0.2, 0.3, -0.4], [3, 4]);
    const weights = tf.tensor2d([1, -2, 0.5, 3, 0, 1, 1, -1, 2, 0.25, -0.5, 1], [3, 4]);
    const variables = model.trainableWeights.map((w) => w.read() as tf.Variable);
    const gradients = (recompute: boolean): number[][] => {
      const { value, grads } = leanGradients(
        () => tf.sum(tf.mul(executor.run([feed], ['Transformer-2-Norm'], { training: true, dropoutSeed: 3, recompute })[0]!, weights)),
        variables);
      const out = grads.map((g) => Array.from(g!.dataSync()));
      tf.dispose([value, ...grads.filter((g): g is tf.Tensor => g !== undefined && g !== null)]);
      return out;
    };
    const plain = gradients(false);
    const before = tf.memory().numTensors;
    const recomputed = gradients(true);
    assert.equal(tf.memory().numTensors, before, 'the recomputed pass leaked tensors');
    plain.forEach((g, i) => assert.ok(maxAbsDiff(g, recomputed[i]!) < 1e-6, `gradient ${i}`));
    assert.ok(plain.some((g) => g.some((v) => Math.abs(v) > 1e-3)), 'the gradients are not all ~0');
    tf.dispose([feed, weights]);
    model.layers.forEach((l) => l.weights.forEach((w) => w.dispose()));
  });

  it('micro-batch accumulation equals the whole batch', () => {
    const model = buildTransformer(tinyConfig(), { seed: 7 });
    const objective = new PretrainingObjective(model);
    const batch = mlmBatch(9, 4, 8, 40);
    const whole = objective.compute(batch);
    const split = objective.compute(batch, { microBatches: 3 });
    assert.ok(Math.abs(whole.loss - split.loss) < 1e-5);
    whole.grads.forEach((g, i) => assert.ok(maxAbsDiff(g.dataSync(), split.grads[i]!.dataSync()) < 1e-5));
  });

  it('micro-batches with dropout on equal the whole batch: masks are keyed by the sample, with and without recompute', () => {
    const model = buildTransformer(tinyConfig({ hidden_dropout_prob: 0.3, attention_probs_dropout_prob: 0.3, initializer_range: 0.2 }), { seed: 7 });
    const objective = new PretrainingObjective(model);
    const batch = mlmBatch(9, 5, 8, 40);
    const whole = objective.compute(batch, { dropoutSeed: 77 });
    const noDropout = objective.compute(batch);
    assert.ok(Math.abs(whole.loss - noDropout.loss) > 1e-3, 'dropout is on');
    for (const options of [{ microBatches: 2 }, { microBatches: 5 }, { microBatches: 3, recompute: true }]) {
      const split = objective.compute(batch, { dropoutSeed: 77, ...options });
      assert.ok(Math.abs(whole.loss - split.loss) < 1e-5, `${JSON.stringify(options)}: loss ${split.loss} vs ${whole.loss}`);
      whole.grads.forEach((g, i) => assert.ok(maxAbsDiff(g.dataSync(), split.grads[i]!.dataSync()) < 1e-5, `${JSON.stringify(options)}: gradient ${i}`));
      tf.dispose(split.grads);
    }
    // a worker's share of the global batch: firstSample places it, the target-weighted sum is the whole
    const head = objective.compute(sliceBatch(batch, 0, 2), { dropoutSeed: 77 });
    const tail = objective.compute(sliceBatch(batch, 2, 5), { dropoutSeed: 77, firstSample: 2 });
    assert.equal(head.targets + tail.targets, whole.targets);
    const combinedLoss = (head.loss * head.targets + tail.loss * tail.targets) / whole.targets;
    assert.ok(Math.abs(combinedLoss - whole.loss) < 1e-5, `shares: loss ${combinedLoss} vs ${whole.loss}`);
    whole.grads.forEach((g, i) => {
      const combined = tf.tidy(() => tf.div(tf.add(tf.mul(head.grads[i]!, head.targets), tf.mul(tail.grads[i]!, tail.targets)), whole.targets));
      assert.ok(maxAbsDiff(g.dataSync(), combined.dataSync()) < 1e-5, `shares: gradient ${i}`);
      combined.dispose();
    });
    tf.dispose([...whole.grads, ...noDropout.grads, ...head.grads, ...tail.grads]);
    disposeTransformer(model);
  });

  it('a sample padded to its own length draws the masks of the whole batch when dropout counts over the batch\'s length (maskLength): pieces = whole', () => {
    const model = buildTransformer(tinyConfig({ hidden_dropout_prob: 0.3, attention_probs_dropout_prob: 0.3, initializer_range: 0.2 }), { seed: 7 });
    const objective = new PretrainingObjective(model);
    // samples of 8, 7 and 6 real positions (mlmBatch pads b % 3 positions)
    const batch = mlmBatch(19, 6, 8, 40);
    const trimmed = (b: number): Batch => {
      const one = sliceBatch(batch, b, b + 1);
      const used = batch.length - (b % 3);
      return { batchSize: 1, length: used, tokenIds: one.tokenIds.slice(0, used), segmentIds: one.segmentIds.slice(0, used), targets: one.targets.slice(0, used) };
    };
    assert.ok(trimmed(1).length < batch.length && trimmed(2).length < batch.length, 'some samples are shorter than the batch');
    const whole = objective.compute(batch, { dropoutSeed: 5, normalizer: 1 });
    const sumOfPieces = (maskLength: number | undefined) => {
      const pieces = Array.from({ length: batch.batchSize }, (_, b) => objective.compute(trimmed(b), { dropoutSeed: 5, firstSample: b, maskLength, normalizer: 1 }));
      const grads = whole.grads.map((_, i) => tf.tidy(() => tf.addN(pieces.map((p) => p.grads[i]!))));
      const lossSum = pieces.reduce((sum, p) => sum + p.lossSum, 0);
      for (const p of pieces) tf.dispose(p.grads);
      return { grads, lossSum };
    };
    const counted = sumOfPieces(batch.length);
    assert.ok(Math.abs(counted.lossSum - whole.lossSum) < 1e-4 * whole.lossSum, `loss sum ${counted.lossSum} vs ${whole.lossSum}`);
    whole.grads.forEach((g, i) => assert.ok(maxAbsDiff(g.dataSync(), counted.grads[i]!.dataSync()) < 1e-5, `gradient ${i}`));
    // counted over each piece's own length instead, the shorter samples draw other masks
    const own = sumOfPieces(undefined);
    assert.ok(Math.abs(own.lossSum - whole.lossSum) > 1e-3, `without maskLength the masks differ: ${own.lossSum} vs ${whole.lossSum}`);
    tf.dispose([...whole.grads, ...counted.grads, ...own.grads]);
    disposeTransformer(model);
  });

  it('a batch without targets is a TrainingError that says what to check', () => {
    const model = buildTransformer(tinyConfig(), { seed: 7 });
    const objective = new PretrainingObjective(model);
    const batch = mlmBatch(9, 2, 8, 40);
    assert.throws(() => objective.compute({ ...batch, targets: new Int32Array(batch.targets.length) }), (e: Error) => e instanceof TrainingError && /no target positions/.test(e.message));
    disposeTransformer(model);
  });

  it('refuses more micro-batches than samples', () => {
    const model = buildTransformer(tinyConfig(), { seed: 7 });
    const objective = new PretrainingObjective(model);
    assert.throws(() => objective.compute(mlmBatch(9, 4, 8, 40), { microBatches: 5 }), /micro-batches must be an integer from 1 to the batch size \(4\), got 5/);
    disposeTransformer(model);
  });
});

describe('training', () => {
  it('the MLM loss falls on a repeated batch', () => {
    const model = buildTransformer(tinyConfig(), { seed: 7 });
    const objective = new PretrainingObjective(model);
    const optimizer = tf.train.adam(0.01);
    const batch = mlmBatch(21, 4, 12, 40);
    const first = objective.evaluate(batch).loss;
    for (let step = 0; step < 40; step++) {
      const { grads } = objective.compute(batch);
      optimizer.applyGradients(objective.weights.map((w, i) => ({ name: w.variable.name, tensor: grads[i]! })));
      tf.dispose(grads);
    }
    const last = objective.evaluate(batch).loss;
    assert.ok(last < first * 0.5, `loss went from ${first} to ${last}`);
  });
});

describe('save and load', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'model-io-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('gives identical outputs after loading', async () => {
    const model = buildTransformer(tinyConfig(), { application: 'unilm', seed: 7 });
    const feeds = [tf.tensor2d([[2, 9, 10, 3, 11, 12]], [1, 6], 'int32'), tf.tensor2d([[0, 0, 0, 0, 1, 1]], [1, 6], 'int32')];
    const expected = (model.predict(feeds) as tf.Tensor).dataSync();
    await saveModel(model, path.join(dir, 'm'));
    const loaded = await loadModel(path.join(dir, 'm'));
    assert.deepEqual((loaded.predict(feeds) as tf.Tensor).dataSync(), expected);
    assert.deepEqual(trainableWeights(loaded).map((w) => w.name), trainableWeights(model).map((w) => w.name));
  });

  it('refuses a weights path outside the model folder', async () => {
    const bad = path.join(dir, 'bad');
    await saveModel(buildTransformer(tinyConfig(), { seed: 7 }), bad);
    const json = JSON.parse(await (await import('node:fs/promises')).readFile(path.join(bad, 'model.json'), 'utf8'));
    json.weightsManifest[0].paths = ['../../etc/passwd'];
    await writeFile(path.join(bad, 'model.json'), JSON.stringify(json));
    await assert.rejects(loadModel(bad), /leaves the model folder/);
  });
});
