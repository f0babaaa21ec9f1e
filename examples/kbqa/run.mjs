#!/usr/bin/env node
// KgCLUE-style question answering over examples/kbqa/kb.tsv, in one command:
//   node examples/kbqa/run.mjs [--steps 1000] [--out runs/kbqa]   (npm run example:kbqa; about 4 minutes on 2 cores)
// 1. questions from the training templates, each with its answer key "subject｜relation";
// 2. a character vocabulary, seq2seq shards, and a small UniLM trained on them by
//    `coordinator start` (local workers), exported as a model;
// 3. a prefix tree of every key of the knowledge base (`pretrain trie build`);
// 4. the questions of the held-out templates decoded with beam search, without and with the
//    tree (`pretrain generate`), and scored: the answer is the object of the decoded key.
// Prints constrained and unconstrained accuracy, and the share of decoded keys that are
// knowledge-base entries; the last line is one JSON object of those figures.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const PRETRAIN = path.join(ROOT, 'dist/src/cli/pretrain.js');
const COORDINATOR = path.join(ROOT, 'dist/coordinator/cli.js');
/** Between subject and relation in a key: a character no subject or relation contains. */
const JOIN = '｜';

const { values: opts } = parseArgs({
  options: {
    steps: { type: 'string', default: '1000' },
    out: { type: 'string', default: path.join('runs', 'kbqa') },
    beam: { type: 'string', default: '4' },
    'local-workers': { type: 'string' },
    // the first n held-out questions only (a quick look; the smoke test)
    limit: { type: 'string' },
  },
});
const out = path.resolve(opts.out);
mkdirSync(out, { recursive: true });

function run(script, args, input) {
  const started = Date.now();
  const r = spawnSync(process.execPath, [script, ...args], { input, encoding: 'utf8', maxBuffer: 1 << 28, env: { ...process.env, PRETRAIN_LOG_FORMAT: 'text' }, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'inherit'] });
  if (r.status !== 0) {
    console.error(r.stdout);
    throw new Error(`${path.basename(script)} ${args[0]} failed (exit ${r.status})`);
  }
  console.error(`  (${path.basename(script)} ${args[0]}: ${((Date.now() - started) / 1000).toFixed(0)} s)`);
  return r.stdout;
}

// the knowledge base and the questions
const kb = readFileSync(path.join(HERE, 'kb.tsv'), 'utf8').trim().split('\n').map((l) => l.split('\t'));
const templates = JSON.parse(readFileSync(path.join(HERE, 'templates.json'), 'utf8'));
const answers = new Map(kb.map(([s, r, o]) => [`${s}${JOIN}${r}`, o]));
const train = [];
const test = [];
for (const [s, r, o] of kb) {
  for (const t of templates[r].train) train.push([t.replace('{s}', s), `${s}${JOIN}${r}`]);
  for (const t of templates[r].heldOut) test.push({ question: t.replace('{s}', s), key: `${s}${JOIN}${r}`, answer: o });
}
if (opts.limit !== undefined) test.splice(Number(opts.limit));
writeFileSync(path.join(out, 'train.tsv'), train.map((p) => p.join('\t')).join('\n') + '\n');
writeFileSync(path.join(out, 'keys.tsv'), [...answers].map(([k, o]) => `${k}\t${o}`).join('\n') + '\n');
const everything = [...train.flat(), ...test.map((t) => t.question), ...kb.flat()].join('\n');
writeFileSync(path.join(out, 'all-text.txt'), everything + '\n');
console.log(`knowledge base: ${answers.size} keys; ${train.length} training questions (${Object.values(templates)[0].train.length} templates per relation); ${test.length} held-out questions (other templates)`);

// vocabulary, shards, training, export
const vocab = path.join(out, 'vocab.txt');
run(PRETRAIN, ['vocab', '--corpus', path.join(out, 'all-text.txt'), '--size', '8000', '--out', vocab, '--force']);
const data = path.join(out, 'data');
run(PRETRAIN, ['prepare', '--task', 'seq2seq', '--corpus', path.join(out, 'train.tsv'), '--vocab', vocab, '--out', data, '--max-length', '64', '--force', '--no-progress']);
const runDir = path.join(out, `run-${Date.now()}`);
const workers = opts['local-workers'] ? ['--local-workers', opts['local-workers']] : [];
const optimizer = JSON.stringify({ type: 'adamw', learningRate: 1e-3, weightDecay: 0.01, wrappers: [{ type: 'piecewiseLinear', schedule: { 50: 1, [opts.steps]: 0.1 } }] });
const trained = run(COORDINATOR, ['start', '--data', data, '--application', 'unilm', '--preset', 'L2-H128', '--steps', opts.steps, '--global-batch', '32', '--optimizer', optimizer, '--run-dir', runDir, '--log-every', '100', '--checkpoint-every', '1000000', ...workers]);
console.log(trained.split('\n').filter((l) => /^(step|done)/.test(l)).join('\n'));
const model = path.join(out, 'model');
run(COORDINATOR, ['export', runDir, '--out', model, '--overwrite']);

// the prefix tree of every key, and the held-out questions decoded without and with it
const trie = path.join(out, 'kb.trie');
run(PRETRAIN, ['trie', 'build', '--vocab', vocab, '--keys', path.join(out, 'keys.tsv'), '--out', trie, '--force', '--no-progress']);
const questions = test.map((t) => t.question).join('\n') + '\n';
const decodeArgs = ['generate', '--model', model, '--vocab', vocab, '--beam', opts.beam, '--max-length', '48', '--batch-size', '16'];
const parse = (stdout) => stdout.trim().split('\n').map((l) => JSON.parse(l));
const free = parse(run(PRETRAIN, decodeArgs, questions));
const constrained = parse(run(PRETRAIN, [...decodeArgs, '--trie', trie], questions));

/** Per question: the decoded key, whether it is a key of the knowledge base, and whether its object is the answer. */
function score(lines) {
  let correct = 0;
  let entries = 0;
  lines.forEach((line, i) => {
    const key = (line.outputs[0]?.text ?? '').replace(/\s+/g, '');
    if (answers.has(key)) entries++;
    if (answers.get(key) === test[i].answer) correct++;
  });
  return { accuracy: correct / lines.length, kbEntryShare: entries / lines.length };
}
const freeScore = score(free);
const constrainedScore = score(constrained);
const pct = (x) => `${(100 * x).toFixed(1)}%`;
console.log(`\nheld-out questions (templates never seen in training): ${test.length}`);
console.log('decoding        accuracy  answers that are KB entries');
console.log(`unconstrained   ${pct(freeScore.accuracy).padStart(8)}  ${pct(freeScore.kbEntryShare).padStart(8)}`);
console.log(`prefix tree     ${pct(constrainedScore.accuracy).padStart(8)}  ${pct(constrainedScore.kbEntryShare).padStart(8)}`);
for (const i of [0, 1, 2]) console.log(`  e.g. ${test[i].question} -> ${constrained[i].outputs[0]?.text} -> ${answers.get((constrained[i].outputs[0]?.text ?? '').replace(/\s+/g, '')) ?? '(none)'} (answer: ${test[i].answer})`);
console.log(`\nreproduce: node examples/kbqa/run.mjs --steps ${opts.steps} --beam ${opts.beam}`);
console.log(JSON.stringify({ questions: test.length, steps: Number(opts.steps), constrainedAccuracy: constrainedScore.accuracy, unconstrainedAccuracy: freeScore.accuracy, constrainedKbEntryShare: constrainedScore.kbEntryShare, unconstrainedKbEntryShare: freeScore.kbEntryShare }));
