import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { selectBackend } from '../src/backend/index.js';
import { FullRecomputeScorer, KvCacheScorer } from '../src/decode/incremental.js';
import { transformerParts } from '../src/decode/model-parts.js';
import type { Scorer } from '../src/decode/scorer.js';
import { type Application, buildTransformer, disposeTransformer } from '../src/model/build.js';
import { lcg, tinyConfig } from './helpers.js';

const VOCAB = 40;
const [CLS, SEP] = [2, 3];

/** The model's own full forward pass over one whole sequence: probabilities of the token after it. */
function fullForward(model: tfl.LayersModel, tokens: number[], segments: number[]): Float32Array {
  return tf.tidy(() => {
    const out = model.predict([tf.tensor2d([tokens], undefined, 'int32'), tf.tensor2d([segments], undefined, 'int32')]) as tf.Tensor;
    return tf.slice(out, [0, tokens.length - 1, 0], [1, 1, VOCAB]).dataSync() as Float32Array;
  });
}

function maxDiff(logProbs: Float32Array, row: number, probs: Float32Array): number {
  let worst = 0;
  // large initial weights make peaked distributions, so that a wrong position or mask shows (near-uniform ones would hide it)
  assert.ok(Math.max(...probs) > 0.1, `a peaked distribution (max ${Math.max(...probs)})`);
  for (let v = 0; v < VOCAB; v++) worst = Math.max(worst, Math.abs(Math.exp(logProbs[row * VOCAB + v]!) - probs[v]!));
  return worst;
}

/**
 * Teacher-forces random tokens through a scorer for `steps` steps, reordering the rows (a
 * beam's gather: repeated, dropped and permuted rows) at two steps, and checks each step's
 * distribution of every row against the model's full forward pass over that row's sequence.
 */
function checkAgainstFullForward(model: tfl.LayersModel, application: Application, scorer: (inputs: number[][]) => Scorer): number {
  const rand = lcg(7);
  const word = (): number => 5 + Math.floor(rand() * (VOCAB - 5));
  const inputs = [3, 6, 1, 4].map((n) => (application === 'unilm' ? [CLS, ...Array.from({ length: n }, word), SEP] : [CLS, ...Array.from({ length: n }, word)]));
  const s = scorer(inputs);
  let rows = inputs.map((ids) => ({ tokens: [...ids], segments: ids.map(() => 0) }));
  const segment = application === 'unilm' ? 1 : 0;
  let worst = 0;
  let last: Int32Array | null = null;
  for (let step = 0; step < 6; step++) {
    const logProbs = s.step(last);
    assert.equal(logProbs.length, rows.length * VOCAB);
    rows.forEach((r, i) => (worst = Math.max(worst, maxDiff(logProbs, i, fullForward(model, r.tokens, r.segments)))));
    if (step === 1 || step === 3) {
      const parents = step === 1 ? Int32Array.from([2, 0, 0, 3, 1, 2]) : Int32Array.from([5, 1, 3]);
      s.select(parents);
      rows = Array.from(parents, (p) => ({ tokens: [...rows[p]!.tokens], segments: [...rows[p]!.segments] }));
    }
    last = Int32Array.from(rows, () => word());
    rows.forEach((r, i) => {
      r.tokens.push(last![i]!);
      r.segments.push(segment);
    });
  }
  s.dispose();
  return worst;
}

for (const backend of ['cpu', 'wasm'] as const) {
  describe(`decoding with a key/value cache (${backend})`, () => {
    for (const application of ['unilm', 'lm'] as const) {
      it(`${application}: every step's probabilities equal the full forward pass over the whole prefix (1e-4), across beam reorders`, async () => {
        await selectBackend(backend);
        const model = buildTransformer(tinyConfig({ vocab_size: VOCAB, max_position_embeddings: 24, initializer_range: 0.5 }), { application, withMlm: true, seed: 3 });
        const before = tf.memory().numTensors;
        const cached = checkAgainstFullForward(model, application, (inputs) => new KvCacheScorer(model, { inputs }));
        assert.ok(cached < 1e-4, `cache vs full forward: ${cached}`);
        assert.equal(tf.memory().numTensors, before, 'the cache scorer leaves no tensor behind');
        const full = checkAgainstFullForward(model, application, (inputs) => new FullRecomputeScorer(model, { inputs }));
        assert.ok(full < 1e-4, `recompute vs full forward: ${full}`);
        disposeTransformer(model);
      });
    }

    it('refuses an encoder model, an input past the positions and a token outside the vocabulary', async () => {
      await selectBackend(backend);
      const encoder = buildTransformer(tinyConfig(), { application: 'encoder', withMlm: true, seed: 1 });
      assert.throws(() => transformerParts(encoder), /is an encoder .* cannot generate/);
      disposeTransformer(encoder);
      const model = buildTransformer(tinyConfig(), { application: 'unilm', withMlm: true, seed: 1 });
      assert.throws(() => new KvCacheScorer(model, { inputs: [Array.from({ length: 16 }, () => 5)] }), /16 tokens: the model's 16 positions/);
      assert.throws(() => new KvCacheScorer(model, { inputs: [[CLS, 40, SEP]] }), /token id 40, outside 1\.\.39/);
      const s = new KvCacheScorer(model, { inputs: [[CLS, 5, SEP]] });
      s.step(null);
      assert.throws(() => s.select(Int32Array.from([1])), /parent row 1 of 1/);
      s.dispose();
      disposeTransformer(model);
    });
  });
}
