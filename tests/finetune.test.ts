/** Fine-tuning's pieces: FGM (the perturbation, the restored embedding, micro-batches and recompute), the metrics, the data errors. */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../src/backend/index.js';
import { classificationBatch, FinetuneDataError, labelIds, labelsOf, parseExampleLine, readExamples } from '../src/finetune/data.js';
import { classificationMetrics } from '../src/finetune/metrics.js';
import { buildClassifier, CLASSIFIER_LAYER } from '../src/finetune/model.js';
import { ClassificationObjective, fgmPerturbation } from '../src/finetune/objective.js';
import { buildTransformer } from '../src/model/build.js';
import { createOptimizer, VariableParameters } from '../src/optim/index.js';
import { Trainer } from '../src/train/trainer.js';
import { lcg, tinyConfig } from './helpers.js';

before(async () => {
  await selectBackend('cpu');
});

/** A batch of `n` random samples (ids 5..39, lengths 4..10, some pairs), labels in [0, 3). */
function randomBatch(seed: number, n: number) {
  const rand = lcg(seed);
  const encoded = Array.from({ length: n }, () => {
    const a = 2 + Math.floor(rand() * 4);
    const b = rand() < 0.5 ? 0 : 1 + Math.floor(rand() * 3);
    const ids = [2, ...Array.from({ length: a }, () => 5 + Math.floor(rand() * 35)), 3];
    const segmentIds = ids.map(() => 0);
    if (b > 0) {
      for (let i = 0; i < b; i++) ids.push(5 + Math.floor(rand() * 35));
      ids.push(3);
      while (segmentIds.length < ids.length) segmentIds.push(1);
    }
    return { ids, segmentIds };
  });
  const labels = Int32Array.from(encoded, () => Math.floor(rand() * 3));
  return classificationBatch(encoded, encoded.map((_, i) => i), labels);
}

function classifier(dropout: number) {
  const base = buildTransformer(tinyConfig({ hidden_dropout_prob: dropout, attention_probs_dropout_prob: dropout }), { withMlm: false, seed: 7 });
  return buildClassifier(base, { labels: 3, seed: 11 });
}

function sumSquares(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i]! - b[i]!) ** 2;
  return s;
}

describe('classifier model', () => {
  it('has the stable layer names, no MLM head, and the token embedding among its weights', () => {
    const model = classifier(0);
    const names = model.layers.map((l) => l.name);
    for (const name of Object.values(CLASSIFIER_LAYER)) assert.ok(names.includes(name), name);
    assert.ok(!names.some((n) => n.startsWith('MLM-')));
    const objective = new ClassificationObjective(model);
    assert.equal(objective.weights[objective.embeddingIndex]!.name, 'Embedding-Token/embeddings');
    assert.deepEqual(model.outputs[0]!.shape, [null, 3]);
  });
});

describe('FGM', () => {
  it('perturbs the token embedding by a vector of norm epsilon and leaves it bit for bit unchanged after the step', async () => {
    const model = classifier(0.1);
    const epsilon = 0.5;
    const seen: number[] = [];
    let original: Float32Array | undefined;
    const objective = new ClassificationObjective(model, {
      epsilon,
      onPerturbed: (embedding) => seen.push(Math.sqrt(sumSquares(embedding.dataSync() as Float32Array, original!))),
    });
    const embedding = objective.weights[objective.embeddingIndex]!.variable;
    original = (embedding.dataSync() as Float32Array).slice();
    const trainer = new Trainer({ objective, optimizer: createOptimizer({ type: 'adamw', learningRate: 1e-3 }), params: new VariableParameters(objective.weights), clipNorm: 0, recompute: true, microBatches: 2 });
    const reduced = await trainer.reduce(randomBatch(1, 6), { dropoutSeed: 5 });
    assert.equal(seen.length, 1, 'one adversarial pass');
    assert.ok(Math.abs(seen[0]! - epsilon) < 1e-4 * epsilon, `perturbation norm ${seen[0]} != ${epsilon}`);
    assert.ok(Number.isFinite(objective.lastAdversarialLoss) && objective.lastAdversarialLoss > 0);
    const after = embedding.dataSync() as Float32Array;
    assert.ok(Buffer.from(after.buffer, after.byteOffset, after.byteLength).equals(Buffer.from(original.buffer)), 'the embedding is restored bit for bit');
    reduced.apply();
    assert.ok(sumSquares(embedding.dataSync() as Float32Array, original) > 0, 'the optimizer step then moves it');
  });

  it('fgmPerturbation: norm epsilon, none for a zero gradient', () => {
    const g = tf.tensor2d([[3, 0], [0, 4]]);
    const r = fgmPerturbation(g, 2)!;
    assert.ok(Math.abs(tf.norm(r).dataSync()[0]! - 2) < 1e-6);
    assert.equal(fgmPerturbation(tf.zeros([2, 2]), 1), undefined);
    tf.dispose([g, r]);
  });

  it('equals the clean gradients plus those at E + r, with micro-batches and recompute as without', () => {
    const model = classifier(0.1);
    const batch = randomBatch(2, 8);
    const options = { dropoutSeed: 9 };
    const plain = new ClassificationObjective(model);
    const fgm = new ClassificationObjective(model, { epsilon: 1 });
    const embedding = plain.weights[plain.embeddingIndex]!.variable;
    // by hand: gradients, the perturbation, gradients on the perturbed embedding, restore
    const clean = plain.compute(batch, options);
    const r = fgmPerturbation(clean.grads[plain.embeddingIndex]!, 1)!;
    const saved = tf.clone(embedding);
    embedding.assign(tf.add(saved, r));
    const perturbed = plain.compute(batch, options);
    embedding.assign(saved);
    const expected = clean.grads.map((g, i) => tf.add(g, perturbed.grads[i]!).dataSync() as Float32Array);
    for (const variant of [{}, { microBatches: 4, recompute: true }]) {
      const got = fgm.compute(batch, { ...options, ...variant });
      assert.ok(Math.abs(got.loss - clean.loss) < 1e-5, 'the reported loss is the clean one');
      assert.ok(Math.abs(got.adversarialLoss - perturbed.loss) < 1e-5);
      got.grads.forEach((g, i) => {
        const values = g.dataSync() as Float32Array;
        const scale = Math.sqrt(sumSquares(expected[i]!, new Float32Array(values.length))) + 1e-6;
        assert.ok(Math.sqrt(sumSquares(values, expected[i]!)) / scale < 1e-4, `${plain.weights[i]!.name} (${JSON.stringify(variant)})`);
      });
      tf.dispose(got.grads);
    }
    tf.dispose([...clean.grads, ...perturbed.grads, r, saved]);
  });
});

describe('classification metrics', () => {
  it('accuracy and macro-F1', () => {
    const m = classificationMetrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0]);
    assert.equal(m.accuracy, 3 / 5);
    // F1: label 0 2*1/(2+2) = 0.5, label 1 2*2/(2+3) = 0.8, label 2 0
    assert.ok(Math.abs(m.macroF1 - (0.5 + 0.8 + 0) / 3) < 1e-12);
    assert.deepEqual(classificationMetrics([1, 0], [1, 0]), { accuracy: 1, macroF1: 1, count: 2 });
  });
});

describe('classification data', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'finetune-data-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads TSV singles and pairs and JSON lines', async () => {
    const tsv = path.join(dir, 'pairs.tsv');
    await writeFile(tsv, 'a\tb\tyes\r\n\nc\td\tno\n');
    const set = await readExamples(tsv);
    assert.equal(set.pairs, true);
    assert.deepEqual(set.examples.map((e) => [e.textA, e.textB, e.label, e.where]), [['a', 'b', 'yes', `${tsv}:1`], ['c', 'd', 'no', `${tsv}:3`]]);
    const jsonl = path.join(dir, 'x.jsonl');
    await writeFile(jsonl, '{"text": "hello", "label": 1}\n{"text": "world", "label": "0"}\n');
    const js = await readExamples(jsonl);
    assert.equal(js.pairs, false);
    assert.deepEqual(labelsOf(js), ['0', '1']);
    assert.deepEqual(parseExampleLine('x\ty', 'stdin:1', false, false), { textA: 'x', textB: 'y', where: 'stdin:1' });
  });

  it('names the file and line of a bad line', async () => {
    const bad = path.join(dir, 'bad.tsv');
    await writeFile(bad, 'a\tyes\nb\tno\nc\td\te\tf\n');
    await assert.rejects(readExamples(bad), (err: Error) => err instanceof FinetuneDataError && err.message.startsWith(`${bad}:3: expected 2 or 3 tab-separated fields`));
    await writeFile(bad, 'a\tyes\nb\t\n');
    await assert.rejects(readExamples(bad), new RegExp(`${bad}:2: the label \\(field 2\\) is empty`));
    await writeFile(bad, 'a\tyes\nb\tc\tno\n');
    await assert.rejects(readExamples(bad), new RegExp(`${bad}:2: a sentence pair, but ${bad}:1 is a single sentence`));
    await writeFile(bad, '{"text": "a"}\n');
    await assert.rejects(readExamples(path.join(dir, 'missing.tsv')), /missing\.tsv does not exist/);
    const json = path.join(dir, 'bad.jsonl');
    await writeFile(json, '{"text": "a", "label": "x"}\n{"text": "b"\n');
    await assert.rejects(readExamples(json), new RegExp(`${json}:2: not valid JSON`));
  });

  it('names labels unseen in training with their file:line', async () => {
    const train = path.join(dir, 'train.tsv');
    const dev = path.join(dir, 'dev.tsv');
    await writeFile(train, 'a\tyes\nb\tno\n');
    await writeFile(dev, 'a\tyes\nb\tmaybe\nc\tperhaps\n');
    const t = await readExamples(train);
    const d = await readExamples(dev);
    assert.throws(() => labelIds(d, labelsOf(t), train), (err: Error) =>
      err.message.startsWith(`${dev}:2: label "maybe" does not occur in the training data ${train}`) && err.message.includes('2 line(s)') && err.message.includes('"perhaps"'));
  });
});
