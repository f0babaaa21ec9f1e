/**
 * `coordinator` as a new user meets it: help, refusals of bad options and files before
 * anything runs (one line, the right exit code), a diverging run, and `coordinator export`.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { selectBackend } from '../src/backend/index.js';
import { loadModel } from '../src/checkpoint/layers-model-io.js';
import { loadLatestCheckpoint } from '../src/checkpoint/run-checkpoint.js';
import { prepare } from '../src/data/prepare.js';
import { disposeTransformer } from '../src/model/build.js';
import { trainableWeights } from '../src/model/weights.js';
import { loadOptimizerState } from '../src/optim/index.js';
import { OPTIMIZER_STATE_FILE } from '../src/run/export.js';
import { prepareOptions, prepareRunData, runScript, SAMPLE_VOCAB, tinyConfig } from './helpers.js';

const CLI = fileURLToPath(new URL('../coordinator/cli.js', import.meta.url));

let dir: string;
const data = { mlm: '', seq2seq: '' };
const runCli = (args: string[]) => runScript(CLI, args, { cwd: dir, timeout: 120_000 });
/** A tiny run on one cpu worker. */
const tinyRun = (runDir: string, extra: string[] = []) => ['start', '--run-dir', runDir, '--local-workers', '1', '--backend', 'cpu', '--preset', 'L1-H32', '--data', data.mlm, '--global-batch', '4', '--log-every', '1', ...extra];

before(async () => {
  await selectBackend('cpu');
  dir = await mkdtemp(path.join(tmpdir(), 'coordinator-cli-'));
  Object.assign(data, await prepareRunData(dir));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('coordinator CLI', () => {
  it('--help lists the commands; start --help its options, with no single-process --local any more', async () => {
    const top = await runCli(['--help']);
    assert.equal(top.code, 0);
    assert.match(top.stdout, /start/);
    assert.match(top.stdout, /audit/);
    assert.match(top.stdout, /export/);
    const start = await runCli(['start', '--help']);
    assert.equal(start.code, 0);
    assert.match(start.stdout, /--backend/);
    assert.match(start.stdout, /--run-dir/);
    assert.doesNotMatch(start.stdout, /--local\b(?!-)/);
    const local = await runCli(['start', '--local']);
    assert.equal(local.code, 2);
    assert.match(local.stderr, /unknown option '--local'/);
  });

  it('rejects an unknown backend and a non-numeric step count with exit code 2 and one line', async () => {
    const backend = await runCli(['start', '--backend', 'tpu']);
    assert.equal(backend.code, 2);
    assert.match(backend.stderr, /'tpu' is invalid.*auto, tensorflow, wasm, cpu/);
    assert.equal(backend.stderr.trim().split('\n').length, 1, backend.stderr);
    const steps = await runCli(['start', '--steps', 'many']);
    assert.equal(steps.code, 2);
    assert.match(steps.stderr, /--steps/);
  });

  it('names a missing or invalid --bert-config file and its bad field, exit code 2, no stack trace, nothing run', async () => {
    const missing = path.join(dir, 'no-such', 'bert_config.json');
    const r = await runCli(['start', '--bert-config', missing, '--run-dir', path.join(dir, 'never')]);
    assert.equal(r.code, 2);
    assert.ok(r.stderr.includes(missing), r.stderr);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
    const file = path.join(dir, 'bad_config.json');
    const { num_hidden_layers: _, ...rest } = tinyConfig({ vocab_size: 1000 });
    await writeFile(file, JSON.stringify(rest));
    const bad = await runCli(['start', '--bert-config', file, '--run-dir', path.join(dir, 'never')]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /^coordinator: error: .*bad_config\.json.*num_hidden_layers: missing \(expected a positive integer\)/);
    assert.equal(bad.stderr.trim().split('\n').length, 1, bad.stderr);
    assert.ok(!existsSync(path.join(dir, 'never')), 'nothing was prepared or started');
  });

  it('names the bad field of an --optimizer, and a missing optimizer file, exit code 2', async () => {
    const r = await runCli(['start', '--optimizer', '{"type":"adafactor","beta1":2,"wrappers":[{"type":"warmup"}]}']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /optimizer\.beta1: Too big/);
    assert.match(r.stderr, /optimizer\.wrappers\[0\]\.type: unknown wrapper type "warmup"/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
    const missing = await runCli(['start', '--optimizer', path.join(dir, 'nope.yaml')]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /optimizer config file .*nope\.yaml does not exist/);
  });

  it('names data made for another task, a folder without a manifest, data that pads with another id than 0, and a too-small vocab_size', async () => {
    const other = await runCli(['start', '--data', data.seq2seq, '--application', 'encoder', '--run-dir', path.join(dir, 'other-task')]);
    assert.equal(other.code, 2, other.stderr);
    assert.match(other.stderr, /the data in .*data-seq2seq is for the seq2seq task; use --application unilm/);
    const none = await runCli(['start', '--data', dir, '--run-dir', path.join(dir, 'no-manifest')]);
    assert.equal(none.code, 2, none.stderr);
    assert.match(none.stderr, /has no manifest\.json: make it with `pretrain prepare/);

    const lines = (await readFile(SAMPLE_VOCAB, 'utf8')).split('\n');
    [lines[0], lines[5]] = [lines[5]!, lines[0]!];
    const vocab = path.join(dir, 'pad-moved-vocab.txt');
    await writeFile(vocab, lines.join('\n'));
    const corpus = path.join(dir, 'pad-moved-corpus.txt');
    await writeFile(corpus, '学而时习之，不亦说乎。\n\n有朋自远方来，不亦乐乎。\n');
    const moved = path.join(dir, 'data-pad-moved');
    await prepare({ ...prepareOptions(corpus, moved, { task: 'mlm', maxLength: 24, recordsPerShard: 100 }), vocab });
    const pad = await runCli(['start', '--data', moved, '--run-dir', path.join(dir, 'pad-moved')]);
    assert.equal(pad.code, 2, pad.stderr);
    assert.match(pad.stderr, /pads with token id 5, but the model reads id 0 as padding: put \[PAD\] on the first line of vocab\.txt/);

    const config = path.join(dir, 'small_vocab.json');
    await writeFile(config, JSON.stringify(tinyConfig({ vocab_size: 100, max_position_embeddings: 64 })));
    const small = await runCli(['start', '--data', data.mlm, '--bert-config', config, '--run-dir', path.join(dir, 'small-vocab')]);
    assert.notEqual(small.code, 0);
    assert.match(small.stderr, /vocab_size 100 is smaller than the vocabulary of the data in .*data-mlm \(\d+ tokens\)/);
  });

  it('a diverging run stops with one line naming the step and what to do, exit code 1; --debug adds the stack trace', async () => {
    const args = tinyRun(path.join(dir, 'diverged'), ['--steps', '6', '--clip-norm', '0', '--optimizer', '{"type":"sgd","learningRate":1e30}']);
    const r = await runCli(args);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^coordinator: error: step \d failed: worker \d+ \(local-0\) failed step \d: the loss became (NaN|Infinity) at step \d \(the weights were not updated\): lower the learning rate or clip the gradients \(--clip-norm\)/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    const debug = await runCli([...tinyRun(path.join(dir, 'diverged-debug'), ['--steps', '6', '--clip-norm', '0', '--optimizer', '{"type":"sgd","learningRate":1e30}']), '--debug']);
    assert.equal(debug.code, 1);
    assert.match(debug.stderr, /\n\s+at /);
  });
});

describe('coordinator export', () => {
  it('writes the newest checkpoint as a LayersModel with the same weights, and the optimizer state beside it', async () => {
    const runDir = path.join(dir, 'to-export');
    const optimizer = path.join(dir, 'optimizer.yaml');
    await writeFile(optimizer, 'optimizer:\n  type: adafactor\n  learningRate: null\n  wrappers:\n    - {type: weightDecay, rate: 0.01}\n    - {type: gradientAccumulation, steps: 3}\n');
    const run = await runCli(tinyRun(runDir, ['--steps', '6', '--optimizer', optimizer]));
    assert.equal(run.code, 0, run.stderr + run.stdout);
    const out = path.join(dir, 'exported');
    const r = await runCli(['export', runDir, '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /exported step 6 \(.*ckpt-00000006, \d+ weights\) to /);
    const { checkpoint } = await loadLatestCheckpoint(runDir);
    const model = await loadModel(out);
    try {
      const saved = new Map(checkpoint!.params.map((p) => [p.name, p.data]));
      const weights = trainableWeights(model);
      assert.equal(weights.length, saved.size);
      for (const w of weights) assert.deepEqual(w.variable.dataSync(), saved.get(w.name), w.name);
    } finally {
      disposeTransformer(model);
    }
    const state = await loadOptimizerState(path.join(out, OPTIMIZER_STATE_FILE));
    assert.equal(state.iterations, 2, 'six steps accumulated by three are two optimizer steps');
    const names = state.slots.map((s) => s.name);
    assert.ok(names.includes('Embedding-Token/embeddings#adafactor/v') && names.includes('Embedding-Token/embeddings#gradientAccumulation/sum'), names.join(' '));

    const again = await runCli(['export', runDir, '--out', out]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /already holds a model; pass --overwrite to replace it, or another --out folder/);
    assert.equal((await runCli(['export', runDir, '--out', out, '--overwrite', '--step', '6'])).code, 0);
    const file = path.join(dir, 'a-file');
    await writeFile(file, 'not a folder');
    const onFile = await runCli(['export', runDir, '--out', file]);
    assert.equal(onFile.code, 1);
    assert.match(onFile.stderr, /cannot export to .*a-file: it is a file, not a folder/);
    const nothing = await runCli(['export', path.join(dir, 'no-run'), '--out', path.join(dir, 'x')]);
    assert.equal(nothing.code, 1);
    assert.match(nothing.stderr, /nothing to export: no checkpoint under /);
  });
});
