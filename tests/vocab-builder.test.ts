import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { readDocuments, readLines } from '../src/data/corpus.js';
import { BertTokenizer } from '../src/data/tokenizer.js';
import { Vocab } from '../src/data/vocab.js';
import { SPECIAL_TOKENS, VocabBuilder } from '../src/data/vocab-builder.js';
import { PRETRAIN_CLI, runScript } from './helpers.js';

const SAMPLE = fileURLToPath(new URL('../../data/sample/corpus.txt', import.meta.url));
let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'vocab-build-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const run = (args: string[]) => runScript(PRETRAIN_CLI, args);

const ENGLISH = 'the unaffable runner was running; unable, unaffable, affable. Running runners run! The able ones';

describe('vocabulary building', () => {
  it('keeps every CJK character and punctuation mark, learns WordPiece units for other words, fills the size', () => {
    const builder = new VocabBuilder();
    builder.add('今天天气很好，今天。');
    builder.add(ENGLISH);
    const base = builder.build(10_000);
    const minimum = 5 + base.singleChars + (base.tokens.length - 5 - base.singleChars - base.merges);
    const built = builder.build(minimum + 6);
    assert.deepEqual(built.tokens.slice(0, 5), [...SPECIAL_TOKENS]);
    assert.equal(built.tokens.length, minimum + 6);
    assert.equal(built.merges, 6);
    const at = (t: string) => built.tokens.indexOf(t);
    assert.equal(built.tokens[5], '天', 'the most frequent character first (3 times)');
    assert.ok(at('今') < at('很') && at('很') < at('气'), 'then by count (今 twice), ties by code point (很 U+5F88 before 气 U+6C14)');
    for (const ch of '今天气很好，。;,!.') assert.ok(built.tokens.includes(ch), ch);
    assert.ok(built.tokens.includes('##n') && built.tokens.includes('r'), 'the alphabet, word-initial and continuation');
    assert.deepEqual(built.tokens.slice(-6), builder.build(minimum + 6).tokens.slice(-6), 'deterministic');
    // whatever the size, the corpus tokenizes without [UNK]
    for (const size of [minimum, minimum + 6, 10_000]) {
      const tokenizer = new BertTokenizer(new Vocab(builder.build(size).tokens, 'x'));
      assert.ok(!tokenizer.tokenize(ENGLISH + '今天天气很好').ids.includes(tokenizer.vocab.unk), `size ${size}`);
    }
    const big = new BertTokenizer(new Vocab(base.tokens, 'x'));
    assert.ok(big.tokenize('unaffable').ids.length < new BertTokenizer(new Vocab(builder.build(minimum).tokens, 'x')).tokenize('unaffable').ids.length, 'merges make words shorter');
  });

  it('refuses a size below what the corpus needs, naming the minimum', () => {
    const builder = new VocabBuilder();
    builder.add('今天天气很好');
    assert.throws(() => builder.build(7), /a vocabulary of 7 tokens cannot hold.*5 CJK characters.*use --size 10 or more/);
  });
});

describe('corpus reading', () => {
  it('streams lines (CRLF, BOM), groups documents by blank lines or one per line, and names invalid UTF-8', async () => {
    const file = path.join(dir, 'c.txt');
    await writeFile(file, '\ufeffa\r\nb\n\n  \nc\n\n\nd');
    const lines: string[] = [];
    for await (const l of readLines(file)) lines.push(l);
    assert.deepEqual(lines, ['a', 'b', '', '  ', 'c', '', '', 'd']);
    const docs: string[][] = [];
    for await (const d of readDocuments(file)) docs.push(d);
    assert.deepEqual(docs, [['a', 'b'], ['c'], ['d']]);
    const perLine: string[][] = [];
    for await (const d of readDocuments(file, 'line')) perLine.push(d);
    assert.deepEqual(perLine, [['a'], ['b'], ['c'], ['d']]);
    const capped: string[][] = [];
    await writeFile(file, 'aaaa\nbbbb\ncccc\ndddd\n\ne\n');
    for await (const d of readDocuments(file, 'blank-line', 9)) capped.push(d);
    assert.deepEqual(capped, [['aaaa', 'bbbb'], ['cccc', 'dddd'], ['e']], 'a document past the size cap is cut (bounded memory without blank lines)');
    const bad = path.join(dir, 'bad.txt');
    await writeFile(bad, Buffer.concat([Buffer.from('好\n'), Buffer.from([0xe4, 0x41])]));
    await assert.rejects(async () => {
      for await (const _ of readLines(bad)) void _;
    }, /bad\.txt is not valid UTF-8 at line 2 \(bytes 4 to 6\)/);
    await assert.rejects(async () => {
      for await (const _ of readLines(path.join(dir, 'none.txt'))) void _;
    }, /corpus file .*none\.txt does not exist/);
  });
});

describe('pretrain vocab', () => {
  it('builds the sample corpus vocabulary the repository ships, and refuses an existing output without --force', async () => {
    const out = path.join(dir, 'vocab.txt');
    const r = await run(['vocab', '--corpus', SAMPLE, '--size', '4000', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /wrote .*vocab\.txt: 3275 tokens/, 'the result on stdout');
    assert.equal(r.stderr, '', 'stderr is for progress and warnings');
    const shipped = await readFile(fileURLToPath(new URL('../../data/sample/vocab.txt', import.meta.url)), 'utf8');
    assert.equal(await readFile(out, 'utf8'), shipped, 'data/sample/vocab.txt is what the command builds');
    const again = await run(['vocab', '--corpus', SAMPLE, '--size', '4000', '--out', out]);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /vocab\.txt exists; pass --force/);
    const small = await run(['vocab', '--corpus', SAMPLE, '--size', '100', '--out', path.join(dir, 'v2.txt')]);
    assert.equal(small.code, 2);
    assert.match(small.stderr, /use --size 3275 or more/);
    const noFolder = await run(['vocab', '--corpus', SAMPLE, '--size', '4000', '--out', path.join(dir, 'no', 'such', 'v.txt')]);
    assert.equal(noFolder.code, 2);
    assert.match(noFolder.stderr, /cannot write .*v\.txt: its folder does not exist/);
    const missing = await run(['vocab', '--corpus', path.join(dir, 'nope.txt'), '--size', '100', '--out', path.join(dir, 'v3.txt')]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /nope\.txt does not exist/);
  });

  it('refuses a corpus with no text (exit 2, one line, nothing written)', async () => {
    const empty = path.join(dir, 'empty.txt');
    await writeFile(empty, '\n  \n\t\n');
    const out = path.join(dir, 'empty-vocab.txt');
    const r = await run(['vocab', '--corpus', empty, '--size', '100', '--out', out]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /the corpus \(.*empty\.txt\) has no text to build a vocabulary from/);
    assert.equal(r.stderr.trim().split('\n').length, 1);
    assert.equal(existsSync(out), false);
  });
});
