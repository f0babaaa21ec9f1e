/** `pretrain finetune` and `pretrain predict` end to end on tiny separable tasks, and their errors. */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { lcg, PRETRAIN_CLI, runScript, SAMPLE_VOCAB } from './helpers.js';

const A = [...'子曰学而时习之不亦说乎'];
const B = [...'春花秋月何时了往事知多少'];

/** Lines of characters from A (label 论语) or B (宋词); pairs: text_b decides the label. */
function separable(seed: number, n: number, pairs: boolean): string {
  const rand = lcg(seed);
  const line = (chars: string[]) => Array.from({ length: 4 + Math.floor(rand() * 5) }, () => chars[Math.floor(rand() * chars.length)]).join('');
  return Array.from({ length: n }, (_, i) => {
    const fromA = i % 2 === 1;
    const text = line(fromA ? A : B);
    return pairs ? `${line(rand() < 0.5 ? A : B)}\t${text}\t${fromA ? '论语' : '宋词'}` : `${text}\t${fromA ? '论语' : '宋词'}`;
  }).join('\n') + '\n';
}

describe('pretrain finetune / predict', () => {
  let dir: string;
  const cli = (args: string[], input?: string) => runScript(PRETRAIN_CLI, args, { input, timeout: 120_000 });
  const common = ['--preset', 'L1-H32', '--vocab', SAMPLE_VOCAB, '--epochs', '10', '--batch-size', '8', '--lr', '1e-3', '--max-length', '24'];
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'finetune-cli-'));
    await writeFile(path.join(dir, 'train.tsv'), separable(1, 64, false));
    await writeFile(path.join(dir, 'dev.tsv'), separable(2, 16, false));
    await writeFile(path.join(dir, 'train-pairs.tsv'), separable(3, 64, true));
    await writeFile(path.join(dir, 'dev-pairs.tsv'), separable(4, 16, true));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reaches 100% dev accuracy on a tiny separable task, saves the best epoch, and predict prints {text, label, probabilities}', async () => {
    const out = path.join(dir, 'single');
    const r = await cli(['finetune', ...common, '--train', path.join(dir, 'train.tsv'), '--dev', path.join(dir, 'dev.tsv'), '--test', path.join(dir, 'dev.tsv'), '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { labels: string[]; bestEpoch: number; dev: { accuracy: number; macroF1: number }; test: { accuracy: number }; epochs: { dev: { accuracy: number } }[] };
    assert.deepEqual(report.labels, ['宋词', '论语']);
    assert.equal(report.dev.accuracy, 1, r.stderr);
    assert.equal(report.dev.macroF1, 1);
    assert.equal(report.test.accuracy, 1, 'the test set is scored with the best epoch\'s model');
    assert.equal(report.epochs.length, 10);
    assert.equal(report.epochs.findIndex((e) => e.dev.accuracy === 1) + 1, report.bestEpoch, 'the first epoch at the best accuracy is kept');
    assert.match(r.stderr, /epoch 10\/10: loss [\d.]+, train accuracy [\d.]+%; dev accuracy [\d.]+%, macro-F1/);
    assert.deepEqual(JSON.parse(await readFile(path.join(out, 'labels.json'), 'utf8')), ['宋词', '论语']);
    const config = JSON.parse(await readFile(path.join(out, 'finetune.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(config['bestEpoch'], report.bestEpoch);
    assert.equal(config['pairs'], false);

    const p = await cli(['predict', '--model', out, '--vocab', SAMPLE_VOCAB], '子曰学而时习之\n\n春花秋月何时了\n');
    assert.equal(p.code, 0, p.stderr);
    const lines = p.stdout.trim().split('\n').map((l) => JSON.parse(l) as { text: string; label: string; probabilities: Record<string, number> });
    assert.deepEqual(lines.map((l) => Object.keys(l)), [['text', 'label', 'probabilities'], ['text', 'label', 'probabilities']]);
    assert.deepEqual(lines.map((l) => [l.text, l.label]), [['子曰学而时习之', '论语'], ['春花秋月何时了', '宋词']]);
    for (const l of lines) {
      assert.deepEqual(Object.keys(l.probabilities), ['宋词', '论语']);
      assert.ok(Math.abs(l.probabilities['宋词']! + l.probabilities['论语']! - 1) < 1e-5);
      assert.ok(l.probabilities[l.label]! > 0.5);
    }
    const mismatch = await cli(['predict', '--model', out, '--vocab', SAMPLE_VOCAB], '子曰\n子曰\t春花\n');
    assert.equal(mismatch.code, 2);
    assert.match(mismatch.stderr, /^pretrain: error: stdin:2: a sentence pair, but the model in .* classifies single sentences\n$/);
    const again = await cli(['finetune', ...common, '--train', path.join(dir, 'train.tsv'), '--dev', path.join(dir, 'dev.tsv'), '--out', out]);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /holds a model already; pass --overwrite/);
  });

  it('sentence pairs with FGM, recompute and micro-batches reach 100% too', async () => {
    const out = path.join(dir, 'pairs');
    const r = await cli(['finetune', ...common, '--train', path.join(dir, 'train-pairs.tsv'), '--dev', path.join(dir, 'dev-pairs.tsv'), '--out', out,
      '--adversarial', 'fgm', '--epsilon', '0.05', '--recompute', '--micro-batches', '2']);
    assert.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { pairs: boolean; dev: { accuracy: number }; epochs: { adversarialLoss?: number }[] };
    assert.equal(report.pairs, true);
    assert.equal(report.dev.accuracy, 1, r.stderr);
    assert.ok(report.epochs.every((e) => typeof e.adversarialLoss === 'number'));
    const p = await cli(['predict', '--model', out, '--vocab', SAMPLE_VOCAB], '春花\t子曰学而\n{"text_a": "子曰", "text_b": "春花秋月"}\n');
    assert.equal(p.code, 0, p.stderr);
    const lines = p.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(lines.map((l) => [l['text_a'], l['text_b'], l['label']]), [['春花', '子曰学而', '论语'], ['子曰', '春花秋月', '宋词']]);
  });

  it('names a bad TSV line with file:line, and dev labels unseen in training, exit 2', async () => {
    const bad = path.join(dir, 'bad.tsv');
    await writeFile(bad, '子曰\t论语\n春花\t宋词\n子曰\t春花\t秋月\t论语\n');
    const r = await cli(['finetune', ...common, '--train', bad, '--dev', path.join(dir, 'dev.tsv'), '--out', path.join(dir, 'x')]);
    assert.equal(r.code, 2);
    assert.equal(r.stderr, `pretrain: error: ${bad}:3: expected 2 or 3 tab-separated fields (text<TAB>label or text_a<TAB>text_b<TAB>label), got 4\n`);
    const dev = path.join(dir, 'dev-unseen.tsv');
    await writeFile(dev, '子曰\t论语\n春花\t唐诗\n');
    const u = await cli(['finetune', ...common, '--train', path.join(dir, 'train.tsv'), '--dev', dev, '--out', path.join(dir, 'y')]);
    assert.equal(u.code, 2);
    assert.match(u.stderr, new RegExp(`^pretrain: error: ${dev}:2: label "唐诗" does not occur in the training data .*train\\.tsv \\(its labels: "宋词", "论语"\\)`));
    const both = await cli(['finetune', '--vocab', SAMPLE_VOCAB, '--train', bad, '--dev', dev, '--out', path.join(dir, 'z')]);
    assert.equal(both.code, 2);
    assert.match(both.stderr, /give the model to fine-tune: --model <dir>/);
    const eps = await cli(['finetune', ...common, '--train', bad, '--dev', dev, '--out', path.join(dir, 'z'), '--epsilon', '1']);
    assert.match(eps.stderr, /--epsilon applies to adversarial training; add --adversarial fgm/);
  });
});
