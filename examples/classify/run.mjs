#!/usr/bin/env node
// Classification on the shipped sample corpus, in one command:
//   node examples/classify/run.mjs [--task source|same-ci] [--steps 300] [--seeds 3] [--out runs/classify]   (npm run example:classify)
// --task source (the default): is a fragment of 4 to 8 characters from the Analects or from a
// Song ci? Chapters and ci split by document as below; fragments balanced between the two.
// --task same-ci: do two lines come from the same Song ci? Built from data/sample/corpus.txt (public
// domain; documents 21 onwards are ci, the first 20 are the Analects), split BY DOCUMENT into
// train / dev / test (70 / 15 / 15%), so no ci of the dev or test set is seen in training.
// For each ci: pairs of two of its lines ("same") and pairs of one of its lines with a line of
// another ci of the same split ("different"), as many of each.
// 1. a small BERT (L2-H128) pretrained by MLM with `coordinator start` (two local workers) on
//    the Analects and the training ci only, then exported (`coordinator export`);
// 2. `pretrain finetune` from that one model, over several seeds, without and with FGM;
// 3. test accuracy (the best dev epoch's model) per run, and mean and spread for both.
// The last line is one JSON object of the figures.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const PRETRAIN = path.join(ROOT, 'dist/src/cli/pretrain.js');
const COORDINATOR = path.join(ROOT, 'dist/coordinator/cli.js');
const CORPUS = path.join(ROOT, 'data/sample/corpus.txt');
const VOCAB = path.join(ROOT, 'data/sample/vocab.txt');
const ANALECTS = 20;

const { values: opts } = parseArgs({
  options: {
    // source: is a fragment of a line from the Analects or from a Song ci; same-ci: do two lines come from the same ci
    task: { type: 'string', default: 'source' },
    steps: { type: 'string', default: '300' },
    seeds: { type: 'string', default: '3' },
    epochs: { type: 'string', default: '3' },
    epsilon: { type: 'string', default: '1' },
    lr: { type: 'string', default: '5e-4' },
    preset: { type: 'string', default: 'L2-H128' },
    'pairs-per-doc': { type: 'string', default: '1' },
    // the first n ci only (the smoke test)
    docs: { type: 'string' },
    'local-workers': { type: 'string', default: '2' },
    out: { type: 'string', default: path.join('runs', 'classify') },
  },
});
const out = path.resolve(opts.out);
mkdirSync(out, { recursive: true });

function run(script, args) {
  const started = Date.now();
  const r = spawnSync(process.execPath, [script, ...args], { encoding: 'utf8', maxBuffer: 1 << 28, env: { ...process.env, PRETRAIN_LOG_FORMAT: 'text' }, stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.status !== 0) {
    console.error(r.stdout, r.stderr);
    throw new Error(`${path.basename(script)} ${args[0]} failed (exit ${r.status})`);
  }
  console.error(`  (${path.basename(script)} ${args[0]}: ${((Date.now() - started) / 1000).toFixed(0)} s)`);
  return r.stdout;
}

// the project's seeded generator (the demo runs after `npm run build`)
const { seededRandom } = await import(new URL('../../dist/src/data/masking.js', import.meta.url).href);
const rand = seededRandom(2024);
const pick = (list) => list[Math.floor(rand() * list.length)];

// the documents: the Analects, then the ci; lines of at least 4 characters
const documents = readFileSync(CORPUS, 'utf8').split(/\n\s*\n/).map((d) => d.split('\n').map((l) => l.trim()).filter((l) => l.length > 0));
const analects = documents.slice(0, ANALECTS);
let ci = documents.slice(ANALECTS).map((d) => d.filter((l) => [...l].length >= 4)).filter((d) => d.length >= 2);
if (opts.docs !== undefined) ci = ci.slice(0, Number(opts.docs));
const order = ci.map((_, i) => i);
for (let i = order.length - 1; i > 0; i--) {
  const j = Math.floor(rand() * (i + 1));
  [order[i], order[j]] = [order[j], order[i]];
}
const cut1 = Math.round(order.length * 0.7);
const cut2 = Math.round(order.length * 0.85);
const splits = { train: order.slice(0, cut1), dev: order.slice(cut1, cut2), test: order.slice(cut2) };
// the Analects' 20 chapters split the same way: 14 / 3 / 3
const chapters = analects.map((_, i) => i);
for (let i = chapters.length - 1; i > 0; i--) {
  const j = Math.floor(rand() * (i + 1));
  [chapters[i], chapters[j]] = [chapters[j], chapters[i]];
}
const analectsSplits = { train: chapters.slice(0, 14), dev: chapters.slice(14, 17), test: chapters.slice(17) };
const perDoc = Number(opts['pairs-per-doc']);
const counts = {};
/** A random run of 4 to 8 characters of a line: short enough that the source is not given away by a line's length or its opening words. */
const fragment = (line) => {
  const chars = [...line];
  const n = Math.min(chars.length, 4 + Math.floor(rand() * 5));
  const at = Math.floor(rand() * (chars.length - n + 1));
  return chars.slice(at, at + n).join('');
};
if (opts.task === 'source') {
  for (const [name, ids] of Object.entries(splits)) {
    const fromAnalects = analectsSplits[name].flatMap((c) => analects[c]).filter((l) => [...l].length >= 4).map((l) => [fragment(l), 'analects']);
    const fromCi = ids.flatMap((d) => ci[d]).map((l) => [fragment(l), 'ci']);
    // as many of each: the larger side is sampled down
    const n = Math.min(fromAnalects.length, fromCi.length);
    const take = (list) => list.map((r) => [rand(), r]).sort((a, b) => a[0] - b[0]).slice(0, n).map(([, r]) => r);
    const rows = [...take(fromAnalects), ...take(fromCi)].map((r) => [rand(), r]).sort((a, b) => a[0] - b[0]).map(([, r]) => r);
    counts[name] = rows.length;
    writeFileSync(path.join(out, `${name}.tsv`), rows.map((r) => r.join('\t')).join('\n') + '\n');
  }
  console.log(`task: is a fragment of 4-8 characters from the Analects or from a Song ci? split by chapter and by ci; fragments train ${counts.train}, dev ${counts.dev}, test ${counts.test} (half each)`);
} else for (const [name, ids] of Object.entries(splits)) {
  const rows = [];
  for (const d of ids) {
    const lines = ci[d];
    for (let k = 0; k < perDoc; k++) {
      const a = Math.floor(rand() * lines.length);
      let b = Math.floor(rand() * (lines.length - 1));
      if (b >= a) b++;
      rows.push(rand() < 0.5 ? [lines[a], lines[b], 'same'] : [lines[b], lines[a], 'same']);
      let other = pick(ids);
      while (other === d) other = pick(ids);
      const pair = [pick(lines), pick(ci[other])];
      rows.push(rand() < 0.5 ? [...pair, 'different'] : [pair[1], pair[0], 'different']);
    }
  }
  counts[name] = rows.length;
  writeFileSync(path.join(out, `${name}.tsv`), rows.map((r) => r.join('\t')).join('\n') + '\n');
}
if (opts.task !== 'source') console.log(`task: do two lines come from the same ci? ${ci.length} ci split by document ${splits.train.length}/${splits.dev.length}/${splits.test.length}; pairs train ${counts.train}, dev ${counts.dev}, test ${counts.test} (half "same")`);

// pretraining on the Analects and the training ci only, then export
const pretrainCorpus = path.join(out, 'pretrain-corpus.txt');
writeFileSync(pretrainCorpus, [...analectsSplits.train.map((c) => analects[c]), ...splits.train.map((d) => ci[d])].map((d) => d.join('\n')).join('\n\n') + '\n');
const data = path.join(out, 'mlm');
run(PRETRAIN, ['prepare', '--corpus', pretrainCorpus, '--vocab', VOCAB, '--out', data, '--max-length', '64', '--force', '--no-progress']);
const runDir = path.join(out, `run-${Date.now()}`);
const optimizer = JSON.stringify({ type: 'adamw', learningRate: 1e-3, weightDecay: 0.01, wrappers: [{ type: 'piecewiseLinear', schedule: { [Math.max(1, Math.round(Number(opts.steps) / 10))]: 1, [opts.steps]: 0.1 } }] });
const trained = run(COORDINATOR, ['start', '--data', data, '--preset', opts.preset, '--steps', opts.steps, '--global-batch', '32', '--optimizer', optimizer, '--run-dir', runDir, '--log-every', '100', '--checkpoint-every', '1000000', '--local-workers', opts['local-workers']]);
console.log(trained.split('\n').filter((l) => /^(step|done)/.test(l)).join('\n'));
const model = path.join(out, 'model');
run(COORDINATOR, ['export', runDir, '--out', model, '--overwrite']);

// fine-tuning: every seed without and with FGM
const seeds = Array.from({ length: Number(opts.seeds) }, (_, i) => i + 1);
const results = { none: [], fgm: [] };
for (const seed of seeds) {
  for (const method of ['none', 'fgm']) {
    const args = ['finetune', '--model', model, '--vocab', VOCAB, '--train', path.join(out, 'train.tsv'), '--dev', path.join(out, 'dev.tsv'), '--test', path.join(out, 'test.tsv'),
      '--out', path.join(out, `cls-${method}-${seed}`), '--overwrite', '--epochs', opts.epochs, '--batch-size', '32', '--lr', opts.lr, '--warmup', '0.1', '--max-length', opts.task === 'source' ? '16' : '40', '--seed', String(seed),
      ...(method === 'fgm' ? ['--adversarial', 'fgm', '--epsilon', opts.epsilon] : [])];
    const report = JSON.parse(run(PRETRAIN, args).trim().split('\n').at(-1));
    results[method].push(report.test.accuracy);
    console.log(`seed ${seed} ${method === 'fgm' ? `FGM (epsilon ${opts.epsilon})` : 'plain'}: dev accuracy ${pct(report.dev.accuracy)} (epoch ${report.bestEpoch}), test accuracy ${pct(report.test.accuracy)}, macro-F1 ${pct(report.test.macroF1)}`);
  }
}

function pct(x) {
  return `${(100 * x).toFixed(1)}%`;
}
function stats(values) {
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const std = values.length > 1 ? Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / (values.length - 1)) : 0;
  return { mean, std, min: Math.min(...values), max: Math.max(...values) };
}
const plain = stats(results.none);
const fgm = stats(results.fgm);
console.log(`\ntest accuracy over ${seeds.length} seed(s) (${counts.test} ${opts.task === 'source' ? 'fragments of unseen chapters and ci' : 'pairs of unseen ci'}; mean ± sample std [min, max]):`);
console.log(`plain            ${pct(plain.mean)} ± ${pct(plain.std)} [${pct(plain.min)}, ${pct(plain.max)}]`);
console.log(`FGM epsilon ${opts.epsilon.padEnd(4)} ${pct(fgm.mean)} ± ${pct(fgm.std)} [${pct(fgm.min)}, ${pct(fgm.max)}]`);
console.log(`\nreproduce: node examples/classify/run.mjs --task ${opts.task} --steps ${opts.steps} --seeds ${opts.seeds} --epochs ${opts.epochs} --epsilon ${opts.epsilon} --lr ${opts.lr}`);
console.log(JSON.stringify({ task: opts.task === 'source' ? 'source of a fragment (Analects or Song ci)' : 'same-ci line pairs', pretrainSteps: Number(opts.steps), seeds: seeds.length, epochs: Number(opts.epochs), epsilon: Number(opts.epsilon), trainExamples: counts.train, devExamples: counts.dev, testExamples: counts.test, plain: { accuracies: results.none, ...plain }, fgm: { accuracies: results.fgm, ...fgm } }));
