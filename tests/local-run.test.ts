import assert from 'node:assert/strict';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { selectBackend } from '../src/backend/index.js';
import { loadModel } from '../src/checkpoint/layers-model-io.js';
import { CLS, corpusFromText, loadBuiltinCorpus, MASK, makeBatch, PAD, pretrainingBatches, SEP, seededRandom, splitHalves } from '../src/data/builtin-corpus.js';
import { trainableWeights } from '../src/model/weights.js';
import { disposeTransformer } from '../src/model/build.js';
import { loadOptimizerState } from '../src/optim/index.js';
import { formatLearningRate, OPTIMIZER_STATE_FILE, runLocal, SaveFailedError } from '../src/train/local-run.js';
import { prepare } from '../src/data/prepare.js';
import { runScript, tinyConfig } from './helpers.js';

const CLI = fileURLToPath(new URL('../coordinator/cli.js', import.meta.url));

const runCli = (args: string[], cwd: string) => runScript(CLI, args, { cwd });

let dir: string;

before(async () => {
  await selectBackend('cpu');
  dir = await mkdtemp(path.join(tmpdir(), 'local-run-'));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('built-in corpus (stand-in)', () => {
  it('has a character vocabulary after the special tokens', () => {
    const { lines, vocab } = loadBuiltinCorpus();
    assert.ok(lines.length >= 30, `only ${lines.length} poems`);
    assert.deepEqual(vocab.tokens.slice(0, 5), ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']);
    const chars = vocab.tokens.slice(5);
    assert.deepEqual([...chars].sort((a, b) => a.codePointAt(0)! - b.codePointAt(0)!), chars);
    assert.equal(vocab.decode(vocab.encode(lines[0]!)), lines[0]);
  });

  it('makes MLM batches: [CLS] text [SEP], 15% targets, deterministic from the seed', () => {
    const { lines, vocab } = loadBuiltinCorpus();
    const options = { application: 'encoder' as const, batchSize: 4, length: 40, seed: 7 };
    const a = pretrainingBatches(vocab, lines, options).next().value;
    const b = pretrainingBatches(vocab, lines, options).next().value;
    assert.deepEqual(a, b);
    for (let r = 0; r < a.batchSize; r++) {
      const row = a.tokenIds.subarray(r * a.length, (r + 1) * a.length);
      const targets = a.targets.subarray(r * a.length, (r + 1) * a.length);
      assert.equal(row[0], CLS);
      const used = row.indexOf(PAD) === -1 ? a.length : row.indexOf(PAD);
      assert.equal(row[used - 1], SEP);
      const chosen = targets.filter((t) => t !== 0).length;
      assert.equal(chosen, Math.max(1, Math.round(0.15 * (used - 2))));
      targets.forEach((t, i) => {
        if (t !== 0) assert.ok(t >= 5 && i > 0 && i < used - 1, 'targets are text characters, never special tokens');
      });
    }
    assert.ok(a.tokenIds.includes(MASK));
  });

  it('makes UniLM batches: source in segment 0, next-token targets on the second half only', () => {
    const { vocab } = corpusFromText('床前明月光，疑是地上霜。举头望明月，低头思故乡。');
    assert.deepEqual(splitHalves('床前明月光，疑是地上霜。举头望明月，低头思故乡。'), ['床前明月光，疑是地上霜。', '举头望明月，低头思故乡。']);
    const batch = makeBatch(vocab, ['床前明月光，疑是地上霜。举头望明月，低头思故乡。'], { application: 'unilm', length: 32, seed: 1 }, seededRandom(1));
    const sep = batch.tokenIds.indexOf(SEP);
    assert.equal(sep, 13);
    assert.equal(batch.segmentIds[sep], 0);
    assert.equal(batch.segmentIds[sep + 1], 1);
    assert.equal(batch.targets[sep], batch.tokenIds[sep + 1]);
    assert.ok(batch.targets.subarray(0, sep).every((t) => t === 0));
  });
});

describe('runLocal', () => {
  it('trains on cpu: the loss falls, no tensor leaks, the saved model loads back with the same weights', async () => {
    const saveDir = path.join(dir, 'model');
    const lines: string[] = [];
    // vocab_size left out: runLocal takes the corpus vocabulary's
    const { vocab_size: _, ...tiny } = tinyConfig({ num_hidden_layers: 1, max_position_embeddings: 16 });
    const summary = await runLocal({
      backend: 'cpu',
      bertConfig: tiny,
      steps: 12,
      batchSize: 4,
      seqLength: 16,
      learningRate: 1e-2,
      seed: 3,
      logEvery: 4,
      saveDir,
      keepModel: true,
      onLog: (line) => lines.push(line),
    });
    assert.ok(lines.some((l) => /^backend: cpu/.test(l)), lines.join('\n'));
    assert.ok(lines.some((l) => /^step 12\/12 +loss [\d.]+ +acc [\d.]+ +grad-norm [\d.]+ +lr 0\.0100 +tokens\/s \d+/.test(l)), lines.join('\n'));
    assert.equal(summary.losses.length, 12);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const early = mean(summary.losses.slice(0, 4));
    const late = mean(summary.losses.slice(-4));
    assert.ok(late < early - 0.1, `training loss did not fall: ${early} -> ${late}`);
    assert.ok(summary.evalLoss < summary.initialEvalLoss - 0.1, `held-out loss did not fall: ${summary.initialEvalLoss} -> ${summary.evalLoss}`);
    assert.ok(summary.tokensPerSecond > 0);
    assert.equal(summary.tensorsAfterLastStep, summary.tensorsAfterFirstStep, 'tensors leak across steps');

    const model = summary.model!;
    assert.ok(existsSync(path.join(saveDir, 'model.json')));
    const state = await loadOptimizerState(path.join(saveDir, OPTIMIZER_STATE_FILE));
    assert.equal(state.iterations, 12);
    assert.deepEqual(state.components, ['adam']);
    assert.equal(state.slots.length, 2 * trainableWeights(model).length, 'Adam keeps m and v of every weight');
    const loaded = await loadModel(saveDir);
    const saved = trainableWeights(model);
    const restored = new Map(trainableWeights(loaded).map((w) => [w.name, w.variable]));
    assert.equal(restored.size, saved.length);
    for (const w of saved) {
      const r = restored.get(w.name);
      assert.ok(r, `weight ${w.name} missing after load`);
      assert.deepEqual(r.dataSync(), w.variable.dataSync(), `weight ${w.name} differs after load`);
    }
    disposeTransformer(model);
    disposeTransformer(loaded);
  });

  it('the same seed gives the same loss curve (weights, data, masks and dropout all seeded)', async () => {
    const { vocab_size: _, ...tiny } = tinyConfig({ num_hidden_layers: 1, hidden_dropout_prob: 0.1, attention_probs_dropout_prob: 0.1 });
    const run = (seed: number) => runLocal({ backend: 'cpu', bertConfig: tiny, steps: 3, batchSize: 2, seqLength: 16, seed, onLog: () => {} });
    const [a, b, c] = [await run(5), await run(5), await run(6)];
    assert.deepEqual(a.losses, b.losses);
    assert.notDeepEqual(a.losses, c.losses);
  });

  it('refuses to replace a saved model unless asked, and rescues a model whose save fails after training', async () => {
    const { vocab_size: _, ...tiny } = tinyConfig({ num_hidden_layers: 1 });
    const base = { backend: 'cpu' as const, bertConfig: tiny, steps: 2, batchSize: 2, seqLength: 16, onLog: () => {} };
    const saveDir = path.join(dir, 'kept');
    await runLocal({ ...base, saveDir });
    await assert.rejects(runLocal({ ...base, saveDir }), /kept already holds a saved model; pass --overwrite to replace it/);
    await runLocal({ ...base, saveDir, overwrite: true });

    // the folder turns into a file during training: the model goes to a temporary folder instead
    const doomed = path.join(dir, 'doomed');
    const sabotage = (line: string) => {
      if (line.startsWith('step 1/')) {
        rmSync(doomed, { recursive: true });
        writeFileSync(doomed, 'in the way');
      }
    };
    const failure = await runLocal({ ...base, saveDir: doomed, onLog: sabotage }).then(() => undefined, (e: unknown) => e);
    assert.ok(failure instanceof SaveFailedError, String(failure));
    assert.match(failure.message, /could not save the model to .*doomed .*saved to .* instead/);
    assert.ok(existsSync(path.join(failure.savedTo, 'model.json')) && existsSync(path.join(failure.savedTo, OPTIMIZER_STATE_FILE)));
    await rm(failure.savedTo, { recursive: true });
  });

  it('formats learning rates readably at every scale', () => {
    assert.equal(formatLearningRate(0), '0');
    assert.equal(formatLearningRate(2.5e-6), '2.50e-6');
    assert.equal(formatLearningRate(1e-3), '1.00e-3');
    assert.equal(formatLearningRate(0.01), '0.0100');
    assert.equal(formatLearningRate(0.5), '0.500');
  });

  it('rejects a config whose vocabulary is smaller than the corpus', async () => {
    await assert.rejects(runLocal({ backend: 'cpu', bertConfig: tinyConfig(), steps: 1, onLog: () => {} }), /vocab_size 40 is smaller/);
  });
});

describe('coordinator CLI', () => {
  it('--help exits 0 and mentions --local', async () => {
    const top = await runCli(['--help'], dir);
    assert.equal(top.code, 0);
    assert.match(top.stdout, /--local/);
    const start = await runCli(['start', '--help'], dir);
    assert.equal(start.code, 0);
    assert.match(start.stdout, /--local/);
    assert.match(start.stdout, /--backend/);
  });

  it('options of the other kind of run are refused by name: --local takes no --global-batch, the distributed run no --batch-size', async () => {
    const local = await runCli(['start', '--local', '--global-batch', '4'], dir);
    assert.equal(local.code, 2);
    assert.equal(local.stderr, 'coordinator: error: --global-batch applies to the distributed run, not to --local\n');
    const distributed = await runCli(['start', '--batch-size', '4'], dir);
    assert.equal(distributed.code, 2);
    assert.match(distributed.stderr, /^coordinator: error: --batch-size applies to --local runs; the distributed run takes --global-batch/);
  });

  it('rejects an unknown backend with exit code 2 and one clear line', async () => {
    const r = await runCli(['start', '--local', '--backend', 'tpu'], dir);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /'tpu' is invalid.*auto, tensorflow, wasm, cpu/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  });

  it('rejects a non-numeric step count with exit code 2', async () => {
    const r = await runCli(['start', '--local', '--steps', 'many'], dir);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--steps/);
  });

  it('names a missing --bert-config file, exit code 2, no stack trace', async () => {
    const missing = path.join(dir, 'no-such', 'bert_config.json');
    const r = await runCli(['start', '--local', '--bert-config', missing], dir);
    assert.equal(r.code, 2);
    assert.ok(r.stderr.includes(missing), r.stderr);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  });

  it('names an invalid --bert-config file and its bad field, exit code 2', async () => {
    const file = path.join(dir, 'bad_config.json');
    const { num_hidden_layers: _, ...rest } = tinyConfig({ vocab_size: 1000 });
    await writeFile(file, JSON.stringify(rest));
    const r = await runCli(['start', '--local', '--bert-config', file], dir);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^coordinator: error: .*bad_config\.json.*num_hidden_layers: missing \(expected a positive integer\)/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  });

  it('runs a tiny local training run and writes model.json', async () => {
    const saveDir = path.join(dir, 'cli-model');
    const r = await runCli(['start', '--local', '--backend', 'cpu', '--steps', '3', '--preset', 'L1-H32', '--seq-length', '16', '--batch-size', '2', '--save', saveDir], dir);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /backend: cpu/);
    assert.match(r.stdout, /step 3\/3/);
    assert.ok(existsSync(path.join(saveDir, 'model.json')));
    assert.ok(existsSync(path.join(saveDir, 'weights.bin')));
  });

  it('takes the optimizer from a YAML file and saves its state beside the model', async () => {
    const saveDir = path.join(dir, 'cli-yaml');
    const file = path.join(dir, 'optimizer.yaml');
    await writeFile(file, 'optimizer:\n  type: adafactor\n  learningRate: null\n  wrappers:\n    - {type: weightDecay, rate: 0.01}\n    - {type: gradientAccumulation, steps: 3}\n');
    const r = await runCli(['start', '--local', '--backend', 'cpu', '--steps', '6', '--preset', 'L1-H32', '--seq-length', '16', '--batch-size', '2', '--optimizer', file, '--save', saveDir], dir);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /optimizer: adafactor > weightDecay > gradientAccumulation/);
    assert.doesNotMatch(r.stdout, /NaN/, 'accumulation micro-steps show the coming learning rate');
    const state = await loadOptimizerState(path.join(saveDir, OPTIMIZER_STATE_FILE));
    assert.equal(state.iterations, 2, 'six micro-batches of three are two optimizer steps');
    const names = state.slots.map((s) => s.name);
    assert.ok(names.includes('Embedding-Token/embeddings#adafactor/v') && names.includes('Embedding-Token/embeddings#gradientAccumulation/sum'), names.join(' '));
  });

  it('refuses more micro-batches than sequences before training, in one line', async () => {
    const r = await runCli(['start', '--local', '--backend', 'cpu', '--micro-batches', '16', '--batch-size', '8'], dir);
    assert.equal(r.code, 2);
    assert.equal(r.stderr, 'coordinator: error: micro-batches (16) cannot exceed the batch size (8): each micro-batch needs at least one sequence\n');
    assert.equal(r.stdout, '');
  });

  it('checks --save before training: a file there is refused at once, with nothing trained', async () => {
    const file = path.join(dir, 'a-file');
    await writeFile(file, 'not a folder');
    for (const save of [file, path.join(file, 'model')]) {
      const r = await runCli(['start', '--local', '--backend', 'cpu', '--preset', 'L1-H32', '--save', save], dir);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, new RegExp(`^coordinator: error: cannot save to ${save.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: .*pass .*--save`));
      assert.doesNotMatch(r.stdout, /step/);
    }
  });

  it('a run with no --save gets its own folder under runs/local, and shows the norm with clipping off', async () => {
    const cwd = await mkdtemp(path.join(dir, 'default-save-'));
    const r = await runCli(['start', '--local', '--backend', 'cpu', '--steps', '2', '--preset', 'L1-H32', '--seq-length', '16', '--batch-size', '2', '--clip-norm', '0'], cwd);
    assert.equal(r.code, 0, r.stderr);
    const saved = /saved model and optimizer state to (runs\/local\/\d{8}-\d{6}) /.exec(r.stdout);
    assert.ok(saved, r.stdout);
    assert.ok(existsSync(path.join(cwd, saved[1]!, 'model.json')));
    assert.match(r.stdout, /step 2\/2 .*grad-norm \d+\.\d{3} /);
    assert.match(r.stdout, /^columns: /m);
    assert.match(r.stdout, /train loss [\d.]+ -> [\d.]+ \(means of the first and the last 2 steps\)/);
  });

  it('a diverged loss is one line and exit code 1; --debug adds the stack trace', async () => {
    const args = ['start', '--local', '--backend', 'cpu', '--steps', '6', '--preset', 'L1-H32', '--seq-length', '16', '--batch-size', '2', '--clip-norm', '0', '--no-save', '--optimizer', '{"type":"sgd","learningRate":1e30}'];
    const r = await runCli(args, dir);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^coordinator: error: the loss became (NaN|Infinity) at step \d \(the weights were not updated\): lower the learning rate or clip the gradients \(--clip-norm\)\n$/);
    const debug = await runCli([...args, '--debug'], dir);
    assert.equal(debug.code, 1);
    assert.match(debug.stderr, /\n\s+at /);
  });

  it('names the bad field of an --optimizer and refuses --lr beside it, exit code 2', async () => {
    const r = await runCli(['start', '--local', '--optimizer', '{"type":"adafactor","beta1":2,"wrappers":[{"type":"warmup"}]}'], dir);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /optimizer\.beta1: Too big/);
    assert.match(r.stderr, /optimizer\.wrappers\[0\]\.type: unknown wrapper type "warmup"/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
    const both = await runCli(['start', '--local', '--optimizer', '{"type":"adam"}', '--lr', '0.1'], dir);
    assert.equal(both.code, 2);
    assert.match(both.stderr, /--lr.*cannot be used with.*--optimizer/);
    const missing = await runCli(['start', '--local', '--optimizer', path.join(dir, 'nope.yaml')], dir);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /optimizer config file .*nope\.yaml does not exist/);
  });
});

describe('runLocal on prepared data', () => {
  const SAMPLE = fileURLToPath(new URL('../../data/sample/corpus.txt', import.meta.url));
  const VOCAB = fileURLToPath(new URL('../../data/sample/vocab.txt', import.meta.url));
  // each test reads these; none depends on another test having made them
  const data = { mlm: '', seq2seq: '' };
  before(async () => {
    for (const task of ['mlm', 'seq2seq'] as const) {
      data[task] = path.join(dir, `data-${task}`);
      await prepare({ corpus: [SAMPLE], vocab: VOCAB, out: data[task], task, maxLength: 24, seed: 1, masking: 'dynamic', copies: 1, recordsPerShard: 5000, documents: task === 'mlm' ? 'blank-line' : 'line', lowerCase: true, force: false, workers: 1 });
    }
  });

  it('trains MLM (dynamic masking) and UniLM from shards: the loss falls', async () => {
    const { vocab_size: _, ...tiny } = tinyConfig({ num_hidden_layers: 1, max_position_embeddings: 24 });
    for (const [task, application] of [['mlm', 'encoder'], ['seq2seq', 'unilm']] as const) {
      const dataDir = data[task];
      const lines: string[] = [];
      const summary = await runLocal({ backend: 'cpu', bertConfig: tiny, application, dataDir, steps: 30, batchSize: 8, learningRate: 1e-2, seed: 2, onLog: (l) => lines.push(l) });
      assert.ok(lines.some((l) => l.startsWith(`data: ${dataDir} (${task}`)), lines.join('\n'));
      assert.equal(summary.config.vocab_size, 3275, 'the vocabulary of the data');
      assert.ok(summary.evalLoss < summary.initialEvalLoss - 0.3, `${task}: held-out loss ${summary.initialEvalLoss} -> ${summary.evalLoss}`);
    }
  });

  it('names data made for another task, and a folder without a manifest', async () => {
    await assert.rejects(runLocal({ backend: 'cpu', dataDir: data.seq2seq, application: 'encoder', steps: 1, onLog: () => {} }), /the data in .*data-seq2seq is for the seq2seq task; use --application unilm/);
    await assert.rejects(runLocal({ backend: 'cpu', dataDir: dir, steps: 1, onLog: () => {} }), /has no manifest\.json: make it with `pretrain prepare/);
  });

  it('refuses data whose [PAD] is not token id 0, which the model reads as padding', async () => {
    const lines = (await readFile(VOCAB, 'utf8')).split('\n');
    [lines[0], lines[5]] = [lines[5]!, lines[0]!];
    const vocab = path.join(dir, 'pad-moved-vocab.txt');
    await writeFile(vocab, lines.join('\n'));
    const corpus = path.join(dir, 'pad-moved-corpus.txt');
    await writeFile(corpus, '学而时习之，不亦说乎。\n\n有朋自远方来，不亦乐乎。\n');
    const out = path.join(dir, 'data-pad-moved');
    await prepare({ corpus: [corpus], vocab, out, task: 'mlm', maxLength: 24, seed: 1, recordsPerShard: 100, documents: 'blank-line', lowerCase: true, force: false, workers: 1 });
    await assert.rejects(runLocal({ backend: 'cpu', dataDir: out, steps: 1, onLog: () => {} }), /pads with token id 5, but the model reads id 0 as padding: put \[PAD\] on the first line of vocab\.txt/);
  });

  it('blames a too-small vocab_size on the data\'s vocabulary, not the built-in corpus', async () => {
    await assert.rejects(
      runLocal({ backend: 'cpu', bertConfig: tinyConfig({ vocab_size: 100, max_position_embeddings: 24 }), dataDir: data.mlm, steps: 1, onLog: () => {} }),
      (e: Error) => /vocab_size 100 is smaller than the vocabulary of the data in .*data-mlm \(3275 tokens\)/.test(e.message) && !/built-in/.test(e.message),
    );
  });
});
