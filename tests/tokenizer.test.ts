import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { BertTokenizer } from '../src/data/tokenizer.js';
import { Vocab } from '../src/data/vocab.js';
import { PRETRAIN_CLI, runScript } from './helpers.js';

const VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'want', '##want', '##ed', 'wa', 'un', 'runn', '##ing', ',', '.', '!', '?', 'hello', 'how', 'are', 'you', 'ah', 'zz', 'world', '中', '国', '人', '，', '。', 'e', 'hel', '##lo', '𠀀'];
const vocab = Vocab.fromText(VOCAB.join('\n') + '\n', 'test vocab');
const tokens = (t: BertTokenizer, ids: number[]) => ids.map((id) => vocab.tokens[id]);

describe('BERT tokenizer', () => {
  const lower = new BertTokenizer(vocab);
  const cased = new BertTokenizer(vocab, { lowerCase: false });

  it('splits on whitespace and punctuation, lower-cases and strips accents (BERT basic tokenizer cases)', () => {
    assert.deepEqual(tokens(lower, lower.tokenize(' \tHeLLo!how  \n Are yoU?  ').ids), ['hello', '!', 'how', 'are', 'you', '?']);
    assert.deepEqual(tokens(cased, cased.tokenize(' \tHeLLo!how  \n Are yoU?  ').ids), ['[UNK]', '!', 'how', '[UNK]', '[UNK]', '?']);
    assert.deepEqual(tokens(lower, lower.tokenize('H\u00E9llo').ids), ['hello']);
    assert.deepEqual(tokens(lower, lower.tokenize('H\u00E9lLOs').ids), ['[UNK]'], 'no piece for the trailing s: the whole word is [UNK]');
    assert.deepEqual(tokens(lower, lower.tokenize('ah\u535A\u63A8zz').ids), ['ah', '[UNK]', '[UNK]', 'zz']);
    assert.deepEqual(tokens(lower, lower.tokenize('ah\u2260zz').ids), ['ah', '[UNK]', 'zz'], '≠ folds to = plus a mark, and = splits as punctuation (BERT splits after folding)');
    assert.deepEqual(lower.tokenize('ah\u2260zz').offsets, [[0, 2], [2, 3], [3, 5]]);
    assert.deepEqual(tokens(cased, cased.tokenize('ah\u2260zz').ids), ['[UNK]'], 'without folding ≠ is a symbol inside the word');
    assert.deepEqual(tokens(lower, lower.tokenize('ah\u2028zz\u2029you\u3000are').ids), ['ah', 'zz', 'you', 'are'], 'line and paragraph separators split like whitespace');
  });

  it('makes every CJK character its own token, including ones outside the BMP', () => {
    const { ids, offsets } = lower.tokenize('中国人，hello世界𠀀。');
    assert.deepEqual(tokens(lower, ids), ['中', '国', '人', '，', 'hello', '[UNK]', '[UNK]', '𠀀', '。']);
    assert.deepEqual(offsets, [[0, 1], [1, 2], [2, 3], [3, 4], [4, 9], [9, 10], [10, 11], [11, 13], [13, 14]]);
  });

  it('drops control characters, NUL and U+FFFD without splitting the word they sit in', () => {
    const { ids, offsets } = lower.tokenize('\u0000he\u0007llo\ufffd world');
    assert.deepEqual(tokens(lower, ids), ['hello', 'world']);
    assert.deepEqual(offsets, [[1, 7], [9, 14]], 'hello spans h, e, BEL, l, l, o');
    const split = lower.tokenize('he\u0007l\u0000lo');
    assert.deepEqual(tokens(lower, split.ids), ['hello']);
  });

  it('WordPiece: greedy longest match with ## pieces; no match or a too-long word is one [UNK]', () => {
    const { ids, offsets } = lower.tokenize('UNwant\u00E9d,running');
    assert.deepEqual(tokens(lower, ids), ['un', '##want', '##ed', ',', 'runn', '##ing']);
    assert.deepEqual(offsets, [[0, 2], [2, 6], [6, 8], [8, 9], [9, 13], [13, 16]]);
    assert.deepEqual(tokens(lower, lower.tokenize('unwantedX running').ids), ['[UNK]', 'runn', '##ing']);
    assert.deepEqual(lower.tokenize('unwantedX').offsets, [[0, 9]]);
    assert.equal(lower.tokenize(`un${'want'.repeat(49)}ed`).ids.length, 51, '200 characters: still WordPiece');
    assert.deepEqual(tokens(lower, lower.tokenize(`${'want'.repeat(50)}ed`).ids), ['[UNK]'], 'beyond Google BERT\'s 200');
    const short = new BertTokenizer(vocab, { maxCharsPerWord: 5 });
    assert.deepEqual(tokens(short, short.tokenize('wanted want').ids), ['[UNK]', 'want']);
  });

  it('offsets slice the original text back, through folding and accents', () => {
    const text = 'Ünwanted, RUNNING 中国!';
    const { ids, offsets } = lower.tokenize(text);
    assert.deepEqual(tokens(lower, ids), ['un', '##want', '##ed', ',', 'runn', '##ing', '中', '国', '!']);
    assert.deepEqual(offsets.map((o) => text.slice(o![0], o![1])), ['Ün', 'want', 'ed', ',', 'RUNN', 'ING', '中', '国', '!']);
  });

  it('encodes [CLS] a [SEP] b [SEP] with segment ids and longest-first truncation', () => {
    const e = lower.encode('中国人', 'hello world', 6);
    assert.deepEqual(tokens(lower, e.ids), ['[CLS]', '中', '国', '[SEP]', 'hello', '[SEP]']);
    assert.deepEqual(e.segmentIds, [0, 0, 0, 0, 1, 1]);
    assert.deepEqual(e.offsets, [null, [0, 1], [1, 2], null, [0, 5], null]);
    const single = lower.encode('hello world');
    assert.deepEqual(tokens(lower, single.ids), ['[CLS]', 'hello', 'world', '[SEP]']);
    assert.deepEqual(single.segmentIds, [0, 0, 0, 0]);
    assert.throws(() => lower.encode('a', 'b', 2), /cannot hold the 3 special tokens/);
  });

  it('decodes with CJK-aware spacing', () => {
    const ids = (...ts: string[]) => ts.map((t) => vocab.idOf(t));
    assert.equal(lower.decode(ids('[CLS]', '中', '国', '人', '[SEP]')), '中国人');
    assert.equal(lower.decode(ids('hello', ',', 'how', 'are', 'you', '?')), 'hello, how are you?');
    assert.equal(lower.decode(ids('中', '国', 'hello', 'world', '。')), '中国hello world。');
    assert.equal(lower.decode(ids('runn', '##ing', 'un', '##want', '##ed')), 'running unwanted');
    assert.equal(lower.decode(ids('中', '，', 'hello')), '中，hello');
  });
});

describe('vocabulary', () => {
  it('names what is missing, an empty file, a missing file and invalid UTF-8', async () => {
    assert.throws(() => Vocab.fromText('[PAD]\n[UNK]\n[CLS]\n[SEP]\n', 'v.txt'), /v\.txt lacks \[MASK\]: a BERT vocabulary needs \[CLS\], \[SEP\], \[MASK\], \[UNK\]/);
    assert.throws(() => Vocab.fromText('', 'empty.txt'), /empty\.txt is empty/);
    const dir = await mkdtemp(path.join(tmpdir(), 'vocab-'));
    try {
      await assert.rejects(Vocab.load(path.join(dir, 'none.txt')), /none\.txt does not exist/);
      const bad = path.join(dir, 'bad.txt');
      await writeFile(bad, Buffer.from([0x5b, 0x43, 0xff, 0x0a]));
      await assert.rejects(Vocab.load(bad), /bad\.txt is not valid UTF-8/);
      const good = path.join(dir, 'vocab.txt');
      await writeFile(good, 'a\r\n[CLS]\r\n[SEP]\r\n[MASK]\r\n[UNK]\r\n');
      const v = await Vocab.load(good);
      assert.deepEqual([v.cls, v.sep, v.mask, v.unk, v.pad, v.size], [1, 2, 3, 4, 0, 5]);
      const dup = Vocab.fromText('[CLS]\n[SEP]\n[MASK]\n[UNK]\nx \nx\n', 'dup.txt');
      assert.equal(dup.idOf('x'), 5, 'a repeated token takes the later id, tokens are stripped (Google load_vocab)');
      assert.match(v.hash, /^[0-9a-f]{64}$/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('pretrain tokenize', () => {
  const run = (args: string[], input?: string | Uint8Array) => runScript(PRETRAIN_CLI, args, { input });

  it('prints tokens, ids and offsets as JSON lines, from an argument or line by line from stdin; a bad vocab exits 2', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'tokenize-'));
    try {
      const file = path.join(dir, 'vocab.txt');
      await writeFile(file, VOCAB.join('\n'));
      const one = await run(['tokenize', '--vocab', file, '中国 unwanted!']);
      assert.equal(one.code, 0, one.stderr);
      assert.deepEqual(JSON.parse(one.stdout), { text: '中国 unwanted!', tokens: ['中', '国', 'un', '##want', '##ed', '!'], ids: [23, 24, 9, 6, 7, 14], offsets: [[0, 1], [1, 2], [3, 5], [5, 9], [9, 11], [11, 12]] });
      const lines = await run(['tokenize', '--vocab', file], 'hello\n人\n');
      assert.deepEqual(lines.stdout.trim().split('\n').map((l) => JSON.parse(l).tokens), [['hello'], ['人']]);
      const cased = await run(['tokenize', '--vocab', file, '--no-lower-case', 'Hello']);
      assert.deepEqual(JSON.parse(cased.stdout).tokens, ['[UNK]']);
      const bad = await run(['tokenize', '--vocab', path.join(dir, 'none.txt'), 'x']);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /none\.txt does not exist/);
      assert.equal(lines.stderr, '');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('rejects invalid UTF-8 on stdin as prepare does, naming stdin and the line (exit 2); CRLF and a BOM are not text', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'tokenize-'));
    try {
      const file = path.join(dir, 'vocab.txt');
      await writeFile(file, VOCAB.join('\n'));
      const ok = await run(['tokenize', '--vocab', file], Buffer.from('\ufeffhello\r\n人\r\n'));
      assert.deepEqual(ok.stdout.trim().split('\n').map((l) => JSON.parse(l).text), ['hello', '人']);
      const r = await run(['tokenize', '--vocab', file], Buffer.concat([Buffer.from('hello\n'), Buffer.from([0x61, 0xff, 0x0a]), Buffer.from('人\n')]));
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /stdin is not valid UTF-8 at line 2 /);
      assert.equal(r.stderr.trim().split('\n').length, 1);
      assert.doesNotMatch(r.stdout, /\ufffd/, 'nothing replaced');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('warns once on stderr about repeated vocabulary lines; the later id wins', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'tokenize-'));
    try {
      const file = path.join(dir, 'vocab.txt');
      await writeFile(file, [...VOCAB, 'hello', 'world'].join('\n'));
      const r = await run(['tokenize', '--vocab', file, 'hello world']);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout).ids, [VOCAB.length, VOCAB.length + 1]);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, /warning: vocabulary file .*vocab\.txt has 2 repeated line\(s\), e\.g\. "hello" on lines 17, 33; a repeated token takes the id of its last line/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
