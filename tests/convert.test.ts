import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { selectBackend } from '../src/backend/index.js';
import { fileURLToPath } from 'node:url';
import { convertModel, exportWeights, huggingFaceConfig, importWeights, writeHuggingFaceModel, type WeightSource } from '../src/checkpoint/convert.js';
import { loadLatestCheckpoint } from '../src/checkpoint/run-checkpoint.js';
import { Vocab } from '../src/data/vocab.js';
import { Journal, JOURNAL_FILE } from '../src/run/journal.js';
import { loadModel, saveModel } from '../src/checkpoint/layers-model-io.js';
import { openLayersModelFolder } from '../src/checkpoint/model-sources.js';
import { expandNameMap, NAME_MAP } from '../src/checkpoint/name-map.js';
import { readSafetensors, type Float32Tensor } from '../src/checkpoint/safetensors.js';
import { buildTransformer, disposeTransformer } from '../src/model/build.js';
import type { BertConfig } from '../src/model/config.js';
import { trainableWeights } from '../src/model/weights.js';
import { lcg, prepareRunData, PRETRAIN_CLI, runScript, SAMPLE_VOCAB, tinyConfig } from './helpers.js';
import { float32Tensor, int64Tensor, writeTfCheckpoint } from './fixtures/tf-checkpoint-writer.js';

/** Every weight random (biases and LayerNorm too), so that a swapped or untransposed tensor shows. */
function randomize(model: tfl.LayersModel, seed: number): void {
  const next = lcg(seed);
  for (const w of trainableWeights(model)) {
    const values = new Float32Array(w.variable.size).map(() => (next() - 0.5) * 0.4 + (w.name.endsWith('/gamma') ? 1 : 0));
    w.variable.assign(tf.tensor(values, w.variable.shape));
  }
}

function weightsOf(model: tfl.LayersModel): Float32Tensor[] {
  return trainableWeights(model).map((w) => ({ name: w.name, shape: [...w.shape], data: new Float32Array(w.variable.dataSync() as Float32Array) }));
}

/** An in-memory source, as a TF checkpoint reader would give it. */
function memorySource(tensors: readonly Float32Tensor[], description = 'memory'): WeightSource {
  const byName = new Map(tensors.map((t) => [t.name, t]));
  return {
    description,
    variables: tensors.map((t) => ({ name: t.name, dtype: 'float32', shape: t.shape })),
    read: (name) => Promise.resolve(byName.get(name)!.data),
  };
}

function predict(model: tfl.LayersModel): Float32Array {
  const tokens = tf.tensor2d([[2, 7, 9, 30, 3, 0], [2, 11, 5, 3, 14, 3]], [2, 6], 'int32');
  const segments = tf.tensor2d([[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]], [2, 6], 'int32');
  const out = model.predict([tokens, segments]) as tf.Tensor;
  const values = out.dataSync() as Float32Array;
  tf.dispose([tokens, segments, out]);
  return values;
}

function assertSameWeights(actual: readonly Float32Tensor[], expected: readonly Float32Tensor[]): void {
  assert.deepEqual(actual.map((w) => w.name), expected.map((w) => w.name));
  for (let i = 0; i < expected.length; i++) {
    assert.deepEqual(actual[i]!.shape, expected[i]!.shape, expected[i]!.name);
    assert.ok(Buffer.from(actual[i]!.data.buffer, actual[i]!.data.byteOffset, actual[i]!.data.byteLength).equals(Buffer.from(expected[i]!.data.buffer, expected[i]!.data.byteOffset, expected[i]!.data.byteLength)), `${expected[i]!.name} differs`);
  }
}

describe('convert: name mapping', () => {
  let config: BertConfig;
  let model: tfl.LayersModel;
  let original: Float32Tensor[];

  before(async () => {
    await selectBackend('cpu');
    config = tinyConfig();
    model = buildTransformer(config, { application: 'encoder', withMlm: true, seed: 3 });
    randomize(model, 5);
    original = weightsOf(model);
  });
  after(() => disposeTransformer(model));

  it('the table expands to every weight of our model, in order and with its shape', () => {
    const expanded = expandNameMap(config);
    assert.deepEqual(expanded.map((e) => e.ours), original.map((w) => w.name));
    assert.deepEqual(expanded.map((e) => e.shape), original.map((w) => w.shape));
    assert.equal(new Set(expanded.map((e) => e.tf)).size, expanded.length);
    assert.equal(new Set(expanded.map((e) => e.hf)).size, expanded.length);
    const q = expanded.find((e) => e.ours === 'Transformer-1-MultiHeadSelfAttention/query/kernel')!;
    assert.equal(q.tf, 'bert/encoder/layer_1/attention/self/query/kernel');
    assert.equal(q.hf, 'bert.encoder.layer.1.attention.self.query.weight');
    assert.equal(q.transform, 'transpose');
    // every kernel transposes to HF, nothing else does
    for (const r of NAME_MAP) assert.equal(r.transform === 'transpose', r.ours.endsWith('/kernel'), r.ours);
  });

  it('ours -> TF-layout names -> ours is bit-identical; pooler, NSP head and optimizer slots are skipped', async () => {
    const tfNamed = exportWeights(original, 'tf', config);
    assert.equal(tfNamed[0]!.name, 'bert/embeddings/word_embeddings');
    assert.ok(tfNamed.some((t) => t.name === 'cls/predictions/output_bias' && t.shape[0] === config.vocab_size));
    const h = config.hidden_size;
    const extras: Float32Tensor[] = [
      { name: 'bert/pooler/dense/kernel', shape: [h, h], data: new Float32Array(h * h) },
      { name: 'bert/pooler/dense/bias', shape: [h], data: new Float32Array(h) },
      { name: 'cls/seq_relationship/output_weights', shape: [2, h], data: new Float32Array(2 * h) },
      { name: 'cls/seq_relationship/output_bias', shape: [2], data: new Float32Array(2) },
      { name: 'global_step', shape: [], data: new Float32Array(1) },
      ...tfNamed.map((t) => ({ ...t, name: `${t.name}/adam_m` })),
      ...tfNamed.map((t) => ({ ...t, name: `${t.name}/adam_v` })),
    ];
    const imported = await importWeights(memorySource([...extras, ...tfNamed]), 'tf', config);
    assertSameWeights(imported.weights, original);
    assert.equal(imported.optimizerVariables, 1 + 2 * tfNamed.length);
    assert.ok(imported.notes.some((n) => n.includes('bert/pooler/dense/kernel') && n.includes('pooler')), imported.notes.join('\n'));
    assert.ok(imported.notes.some((n) => n.includes('cls/seq_relationship/output_weights') && n.includes('next-sentence')), imported.notes.join('\n'));
  });

  it('HF names: kernels transposed, older gamma/beta names and a BertModel without the bert. prefix read too', async () => {
    const hf = exportWeights(original, 'hf', config);
    const inter = hf.find((t) => t.name === 'bert.encoder.layer.0.intermediate.dense.weight')!;
    assert.deepEqual(inter.shape, [config.intermediate_size, config.hidden_size]);
    const ours = original.find((w) => w.name === 'Transformer-0-FeedForward/intermediate/kernel')!;
    // [in, out] -> [out, in]
    assert.equal(inter.data[1 * config.hidden_size + 2], ours.data[2 * config.intermediate_size + 1]);
    assert.ok(!hf.some((t) => t.name.startsWith('cls.predictions.decoder')), 'the tied copies are left to from_pretrained');
    const renamed = hf.map((t) => ({ ...t, name: t.name.replace(/LayerNorm\.weight$/, 'LayerNorm.gamma').replace(/LayerNorm\.bias$/, 'LayerNorm.beta').replace(/^bert\./, '') }));
    const wordEmbeddings = hf[0]!;
    const tied = [
      { name: 'cls.predictions.decoder.weight', shape: wordEmbeddings.shape, data: wordEmbeddings.data },
      { name: 'cls.predictions.decoder.bias', shape: [config.vocab_size], data: hf.at(-1)!.data },
    ];
    const imported = await importWeights(memorySource([...renamed, ...tied]), 'hf', config);
    assertSameWeights(imported.weights, original);
    assert.ok(!imported.notes.some((n) => n.startsWith('warning')), imported.notes.join('\n'));
  });

  it('a config whose shapes disagree with the checkpoint is an error naming the variable', async () => {
    const tfNamed = exportWeights(original, 'tf', config);
    await assert.rejects(importWeights(memorySource(tfNamed, 'ckpt'), 'tf', tinyConfig({ intermediate_size: 64 })), (e: Error) => {
      assert.match(e.message, /bert\/encoder\/layer_0\/intermediate\/dense\/kernel is \[16, 32\] in ckpt, the config wants \[16, 64\] \(hidden_size, intermediate_size\)/);
      return true;
    });
    // fewer layers in the config: the extra layer's variables are unexpected, named
    await assert.rejects(importWeights(memorySource(tfNamed), 'tf', tinyConfig({ num_hidden_layers: 1 })), /unexpected variable\(s\).*bert\/encoder\/layer_1\/attention\/self\/query\/kernel/s);
    // more: the missing ones are named
    await assert.rejects(importWeights(memorySource(tfNamed.filter((t) => !t.name.startsWith('cls/'))), 'tf', config), /missing 5 variable\(s\).*cls\/predictions\/transform\/dense\/kernel/s);
  });
});

describe('pretrain convert', () => {
  let dir: string;
  let config: BertConfig;
  let model: tfl.LayersModel;
  let original: Float32Tensor[];
  let expectedOutput: Float32Array;
  let modelDir: string;

  before(async () => {
    await selectBackend('cpu');
    dir = await mkdtemp(path.join(tmpdir(), 'convert-'));
    config = tinyConfig({ hidden_act: 'gelu' });
    model = buildTransformer(config, { application: 'encoder', withMlm: true, seed: 4 });
    randomize(model, 9);
    original = weightsOf(model);
    expectedOutput = predict(model);
    modelDir = path.join(dir, 'ours');
    await saveModel(model, modelDir);
  });
  after(async () => {
    disposeTransformer(model);
    await rm(dir, { recursive: true, force: true });
  });

  it('ours -> safetensors (HF names + config.json) -> ours is bit-identical, and the MLM output is the same', async () => {
    const hfDir = path.join(dir, 'hf');
    const out = await runScript(PRETRAIN_CLI, ['convert', '--from', 'tfjs', '--to', 'safetensors', modelDir, hfDir]);
    assert.equal(out.code, 0, out.stderr);
    assert.match(out.stdout, /42 weights/);
    const hfConfig = JSON.parse(await readFile(path.join(hfDir, 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(hfConfig, huggingFaceConfig(config));
    assert.deepEqual(hfConfig['architectures'], ['BertForMaskedLM']);
    assert.equal(hfConfig['layer_norm_eps'], 1e-12);
    const written = await readSafetensors(path.join(hfDir, 'model.safetensors'));
    assert.equal(written.metadata['format'], 'pt', 'from_pretrained refuses safetensors without format metadata');
    assert.deepEqual(written.tensors.find((t) => t.name === 'bert.encoder.layer.1.output.dense.weight')?.shape, [config.hidden_size, config.intermediate_size]);
    assert.deepEqual(written.tensors.find((t) => t.name === 'cls.predictions.bias')?.shape, [config.vocab_size]);

    const backDir = path.join(dir, 'back');
    const back = await runScript(PRETRAIN_CLI, ['convert', '--from', 'safetensors', '--to', 'tfjs', hfDir, backDir]);
    assert.equal(back.code, 0, back.stderr);
    const folder = await openLayersModelFolder(backDir);
    assert.deepEqual(folder.config, config);
    assert.equal(folder.application, 'encoder');
    const reloaded = await loadModel(backDir);
    try {
      assertSameWeights(weightsOf(reloaded), original);
      assert.deepEqual(predict(reloaded), expectedOutput);
    } finally {
      disposeTransformer(reloaded);
    }
    const bertConfig = JSON.parse(await readFile(path.join(backDir, 'bert_config.json'), 'utf8')) as unknown;
    assert.deepEqual(bertConfig, config);

    // an occupied output folder is refused
    const again = await runScript(PRETRAIN_CLI, ['convert', '--from', 'safetensors', '--to', 'tfjs', path.join(hfDir, 'model.safetensors'), backDir]);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /model\.json exists; pass --overwrite/);
  });

  it('a --config that disagrees with the weights exits 2 naming the variable; a missing config is named', async () => {
    const hfDir = path.join(dir, 'hf-bad');
    const bad = path.join(dir, 'bad_config.json');
    await writeFile(bad, JSON.stringify({ ...config, hidden_size: 24, num_attention_heads: 2 }));
    const out = await runScript(PRETRAIN_CLI, ['convert', '--from', 'tfjs', '--to', 'safetensors', '--config', bad, modelDir, hfDir]);
    assert.equal(out.code, 2, out.stderr);
    assert.match(out.stderr, /^pretrain: error: .*Embedding-Token\/embeddings is \[40, 16\] in .*, the config wants \[40, 24\] \(vocab_size, hidden_size\)/);
    assert.equal(out.stderr.trim().split('\n').length, 1);
    const ckpt = path.join(dir, 'ckpt');
    await writeFile(path.join(dir, 'empty.index'), '');
    const noConfig = await runScript(PRETRAIN_CLI, ['convert', '--from', 'tf-checkpoint', '--to', 'tfjs', path.join(dir, 'empty'), ckpt]);
    assert.equal(noConfig.code, 2, noConfig.stderr);
    assert.match(noConfig.stderr, /no model config for .*empty: looked for .*bert_config\.json.*pass --config/);
  });
});

describe('coordinator start --init', () => {
  const COORDINATOR_CLI = fileURLToPath(new URL('../coordinator/cli.js', import.meta.url));
  let dir: string;

  before(async () => {
    await selectBackend('cpu');
    dir = await mkdtemp(path.join(tmpdir(), 'convert-init-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a run starts from an imported model: after one step at learning rate 1e-20 its checkpoint holds exactly the imported weights; the journal records --init; a model of another shape is refused', async () => {
    const data = await prepareRunData(dir);
    const config = tinyConfig({ vocab_size: (await Vocab.load(SAMPLE_VOCAB)).size, max_position_embeddings: 32 });
    const model = buildTransformer(config, { application: 'encoder', withMlm: true, seed: 7 });
    randomize(model, 11);
    const weights = weightsOf(model);
    disposeTransformer(model);
    // imported: Hugging Face safetensors -> our tfjs folder
    const hfDir = path.join(dir, 'hf');
    await writeHuggingFaceModel(hfDir, config, weights);
    const initDir = path.join(dir, 'init');
    await convertModel({ from: 'safetensors', to: 'tfjs', input: hfDir, output: initDir });

    const runDir = path.join(dir, 'run');
    const start = ['start', '--run-dir', runDir, '--local-workers', '1', '--backend', 'cpu', '--data', data.mlm, '--global-batch', '4', '--checkpoint-every', '1', '--optimizer', '{"type":"sgd","learningRate":1e-20}'];
    const r = await runScript(COORDINATOR_CLI, [...start, '--steps', '1', '--init', initDir], { cwd: dir, timeout: 120_000 });
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /initial weights: 42 weights from .*init \(--init\)/);
    const { checkpoint } = await loadLatestCheckpoint(runDir);
    assert.equal(checkpoint?.step, 1);
    assertSameWeights(checkpoint!.params, weights);
    const { journal, replay } = await Journal.open(path.join(runDir, JOURNAL_FILE));
    await journal.close();
    const started = replay.entries.find((e) => e.type === 'start');
    assert.equal(started?.type === 'start' ? started.settings?.['init'] : undefined, path.resolve(initDir));

    // another size than the run's model: exit 2, the variable named, nothing run
    const other = path.join(dir, 'other-run');
    const bad = await runScript(COORDINATOR_CLI, ['start', '--run-dir', other, '--local-workers', '1', '--backend', 'cpu', '--data', data.mlm, '--preset', 'L1-H32', '--steps', '1', '--init', initDir], { cwd: dir, timeout: 120_000 });
    assert.equal(bad.code, 2, bad.stderr + bad.stdout);
    assert.match(bad.stderr, /--init .*init: .*Embedding-Token\/embeddings is \[\d+, 16\] in .*, the config wants \[\d+, 32\]/);
  });
});

describe('convert: a TensorFlow checkpoint as Google releases it', () => {
  it('bert_model.ckpt (index + data, Snappy blocks, adam slots, global_step) + bert_config.json -> tfjs: bit-identical weights, the same MLM output', async () => {
    await selectBackend('cpu');
    const work = await mkdtemp(path.join(tmpdir(), 'convert-tf-'));
    const config = tinyConfig();
    const model = buildTransformer(config, { application: 'encoder', withMlm: true, seed: 4 });
    try {
      randomize(model, 9);
      const original = weightsOf(model);
      const expected = predict(model);
      const google = path.join(work, 'chinese_L-2_H-32');
      const tfNamed = exportWeights(original, 'tf', config);
      const tensors = [
        ...tfNamed.map((t) => float32Tensor(t.name, t.shape, t.data)),
        ...tfNamed.map((t) => float32Tensor(`${t.name}/adam_m`, t.shape, new Float32Array(t.data.length))),
        int64Tensor('global_step', [], [1000n]),
      ];
      await mkdir(google, { recursive: true });
      await writeTfCheckpoint(path.join(google, 'bert_model.ckpt'), tensors, { blockSize: 512, snappy: (block) => block % 2 === 1, compressIndex: true });
      await writeFile(path.join(google, 'bert_config.json'), JSON.stringify(config));
      const out = path.join(work, 'imported');
      const r = await runScript(PRETRAIN_CLI, ['convert', '--from', 'tf-checkpoint', '--to', 'tfjs', path.join(google, 'bert_model.ckpt'), out]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`${tfNamed.length} weights.*${tfNamed.length + 1} optimizer variables skipped`));
      const imported = await loadModel(out);
      try {
        assertSameWeights(weightsOf(imported), original);
        assert.deepEqual(predict(imported), expected);
      } finally {
        disposeTransformer(imported);
      }
    } finally {
      disposeTransformer(model);
      await rm(work, { recursive: true, force: true });
    }
  });
});
