import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { selectBackend } from '../src/backend/index.js';
import { saveModel } from '../src/checkpoint/layers-model-io.js';
import { BertTokenizer } from '../src/data/tokenizer.js';
import { Vocab } from '../src/data/vocab.js';
import { TextGenerator } from '../src/decode/generate.js';
import { buildTransformer, disposeTransformer } from '../src/model/build.js';
import { PRETRAIN_CLI, runScript, SAMPLE_VOCAB, tinyConfig } from './helpers.js';

interface Line {
  input: string;
  outputs: { text: string; tokens: string[]; ids: number[]; score: number; ended: boolean }[];
}

const parse = (stdout: string): Line[] => stdout.trim().split('\n').map((l) => JSON.parse(l) as Line);

describe('pretrain generate', () => {
  let dir: string;
  let unilm: string;
  let encoder: string;
  let vocabSize: number;
  let expected: Line['outputs'];

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'decode-cli-'));
    await selectBackend('cpu');
    const vocab = await Vocab.load(SAMPLE_VOCAB);
    vocabSize = vocab.size;
    const config = tinyConfig({ vocab_size: vocabSize, max_position_embeddings: 48, initializer_range: 0.3 });
    const model = buildTransformer(config, { application: 'unilm', withMlm: true, seed: 2 });
    unilm = path.join(dir, 'unilm');
    await saveModel(model, unilm);
    expected = new TextGenerator(model, new BertTokenizer(vocab)).generate(['今天天气很好'], { mode: 'beam', beams: 3, numReturn: 2, maxLength: 6 })[0]!.map((o) => ({ ...o }));
    disposeTransformer(model);
    const enc = buildTransformer(config, { application: 'encoder', withMlm: true, seed: 2 });
    encoder = path.join(dir, 'encoder');
    await saveModel(enc, encoder);
    disposeTransformer(enc);
  });
  after(() => rm(dir, { recursive: true, force: true }));

  const cli = (args: string[], input?: string) => runScript(PRETRAIN_CLI, ['generate', '--backend', 'cpu', ...args], { input });

  it('beam search on an exported model: n-best JSON line, the same as the library', async () => {
    const r = await cli(['--model', unilm, '--vocab', SAMPLE_VOCAB, '--beam', '3', '--n-best', '2', '--max-length', '6', '今天天气很好']);
    assert.equal(r.code, 0, r.stderr);
    const [line] = parse(r.stdout);
    assert.equal(line!.input, '今天天气很好');
    assert.equal(line!.outputs.length, 2);
    assert.ok(line!.outputs[0]!.score >= line!.outputs[1]!.score);
    assert.deepEqual(line!.outputs.map((o) => o.ids), expected.map((o) => o.ids));
    line!.outputs.forEach((o, i) => assert.ok(Math.abs(o.score - expected[i]!.score) < 1e-4));
    assert.equal(line!.outputs[0]!.tokens.length, line!.outputs[0]!.ids.length);
  });

  it('samples stdin lines in batches, reproducibly by seed', async () => {
    const input = '第一句\n\n第二句话\nthird line\n';
    const args = ['--model', unilm, '--vocab', SAMPLE_VOCAB, '--sample', '--top-p', '0.9', '--num-samples', '2', '--seed', '7', '--max-length', '5', '--batch-size', '2'];
    const a = await cli(args, input);
    assert.equal(a.code, 0, a.stderr);
    const lines = parse(a.stdout);
    assert.deepEqual(lines.map((l) => l.input), ['第一句', '第二句话', 'third line']);
    for (const l of lines) assert.equal(l.outputs.length, 2);
    const b = await cli([...args.slice(0, -2), '--batch-size', '3'], input);
    assert.deepEqual(parse(b.stdout), lines, 'the same samples whatever the batching');
  });

  it('refuses a vocabulary that does not match the model, an encoder, a trie it cannot load and contradicting options', async () => {
    const small = path.join(dir, 'small-vocab.txt');
    await writeFile(small, (await readFile(SAMPLE_VOCAB, 'utf8')).split('\n').slice(0, 100).join('\n') + '\n');
    const mismatch = await cli(['--model', unilm, '--vocab', small, 'x']);
    assert.equal(mismatch.code, 2);
    assert.match(mismatch.stderr, new RegExp(`^pretrain: error: vocabulary file ${small.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} has 100 tokens but the model's token embedding has ${vocabSize} rows: use the vocabulary the model was trained with\n$`));
    const enc = await cli(['--model', encoder, '--vocab', SAMPLE_VOCAB, 'x']);
    assert.equal(enc.code, 2);
    assert.match(enc.stderr, /is an encoder .* cannot generate; use a unilm or lm model/);
    const trie = await cli(['--model', unilm, '--vocab', SAMPLE_VOCAB, '--trie', path.join(dir, 'no-such.trie'), 'x']);
    assert.equal(trie.code, 2, trie.stderr);
    assert.match(trie.stderr, /no-such\.trie/);
    assert.equal(trie.stderr.trim().split('\n').length, 1, trie.stderr);
    const both = await cli(['--model', unilm, '--vocab', SAMPLE_VOCAB, '--beam', '2', '--sample', 'x']);
    assert.equal(both.code, 2);
    assert.match(both.stderr, /--beam and --sample exclude each other/);
    const topP = await cli(['--model', unilm, '--vocab', SAMPLE_VOCAB, '--top-p', '0.5', 'x']);
    assert.match(topP.stderr, /--top-p applies to sampling only; add --sample/);
    const app = await cli(['--model', unilm, '--vocab', SAMPLE_VOCAB, '--application', 'lm', 'x']);
    assert.match(app.stderr, /--application lm, but the model .* was built for unilm/);
    const missing = await cli(['--model', path.join(dir, 'nothing'), '--vocab', SAMPLE_VOCAB, 'x']);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /is not a folder/);
  });

  it('under --trie every output is a key of the tree, and the tree must be of the model\'s vocabulary', async () => {
    const keys = path.join(dir, 'kb.tsv');
    await writeFile(keys, '学而时习之\t论语\n学而不思则罔\t论语\n明月几时有\t水调歌头\n明月\t月\n');
    const trie = path.join(dir, 'kb.trie');
    const built = await runScript(PRETRAIN_CLI, ['trie', 'build', '--vocab', SAMPLE_VOCAB, '--keys', keys, '--out', trie, '--force', '--no-progress']);
    assert.equal(built.code, 0, built.stderr);
    const r = await cli(['--model', unilm, '--vocab', SAMPLE_VOCAB, '--trie', trie, '--beam', '3', '--n-best', '3', '--max-length', '8'], '子曰\n不亦乐乎\n');
    assert.equal(r.code, 0, r.stderr);
    const allowed = new Set(['学而时习之', '学而不思则罔', '明月几时有', '明月']);
    for (const line of parse(r.stdout)) {
      assert.ok(line.outputs.length > 0, JSON.stringify(line));
      for (const o of line.outputs) assert.ok(allowed.has(o.text) && o.ended, `${o.text} is not a key: ${JSON.stringify(line)}`);
    }
    const small = path.join(dir, 'other-vocab.txt');
    await writeFile(small, (await readFile(SAMPLE_VOCAB, 'utf8')).split('\n').slice(0, 200).join('\n') + '\n');
    const other = path.join(dir, 'other.trie');
    assert.equal((await runScript(PRETRAIN_CLI, ['trie', 'build', '--vocab', small, '--keys', keys, '--out', other, '--force', '--no-progress'])).code, 0);
    const refused = await cli(['--model', unilm, '--vocab', SAMPLE_VOCAB, '--trie', other, 'x']);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /other\.trie/);
  });
});
