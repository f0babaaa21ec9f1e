import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { decodeExample } from '../src/data/example.js';
import { packDocument } from '../src/data/instances.js';
import { maskWholeWords, seededRandom } from '../src/data/masking.js';
import { type Manifest, prepare, type PrepareOptions } from '../src/data/prepare.js';
import { readRecords } from '../src/data/tfrecord.js';
import { Vocab } from '../src/data/vocab.js';
import { PRETRAIN_CLI, runScript, prepareOptions, SAMPLE_VOCAB, writeSampleSlice } from './helpers.js';

const VOCAB = SAMPLE_VOCAB;
let dir: string;
let small: string;
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'prepare-'));
  // the first 40 documents of the sample corpus: fast, and still several shards
  small = await writeSampleSlice(dir, 40);
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const options = (out: string, extra: Partial<PrepareOptions> = {}): PrepareOptions => prepareOptions(small, path.join(dir, out), { masking: 'dynamic', copies: 1, recordsPerShard: 50, ...extra });

async function instances(out: string, manifest: Manifest) {
  const all: Record<string, number[]>[] = [];
  for (const shard of manifest.shards) {
    for await (const r of readRecords(path.join(out, shard.file))) {
      const ex = decodeExample(r.data);
      all.push(Object.fromEntries(Object.entries(ex).map(([k, f]) => [k, f.values.map(Number)])));
    }
  }
  return all;
}

describe('prepare (mlm)', () => {
  it('writes shards of packed instances with word ids and a manifest whose counts and checksums match the files', async () => {
    const o = options('mlm');
    const manifest = await prepare(o);
    const vocab = await Vocab.load(VOCAB);
    assert.equal(manifest.task, 'mlm');
    assert.equal(manifest.vocab.hash, vocab.hash);
    assert.deepEqual(Object.keys(manifest.features), ['token_ids', 'word_ids', 'document']);
    assert.equal(manifest.documents, 40);
    assert.ok(manifest.shards.length >= 2, `${manifest.shards.length} shards`);
    for (const s of manifest.shards) {
      const bytes = await readFile(path.join(o.out, s.file));
      assert.equal(s.bytes, bytes.length);
      assert.equal(s.sha256, createHash('sha256').update(bytes).digest('hex'));
    }
    const all = await instances(o.out, manifest);
    assert.equal(all.length, manifest.records);
    assert.equal(manifest.shards.reduce((n, s) => n + s.records, 0), manifest.records);
    let filled = 0;
    let lastDocument = 0;
    for (const { token_ids: ids, word_ids: words, document } of all) {
      assert.ok(ids!.length <= 64);
      assert.equal(words!.length, ids!.length);
      assert.equal(ids![0], vocab.cls);
      const sep = ids!.indexOf(vocab.sep);
      assert.equal(sep, ids!.length - 1, 'one [SEP], last: stored unpadded');
      assert.equal(words![0], 0);
      assert.equal(words![sep], 0);
      assert.equal(document!.length, 1);
      assert.ok(document![0] === lastDocument || document![0] === lastDocument + 1, 'documents numbered in corpus order');
      lastDocument = document![0]!;
      const inner = words!.slice(1, sep);
      assert.equal(inner[0], 1);
      inner.forEach((w, i) => i > 0 && assert.ok(w === inner[i - 1] || w === inner[i - 1]! + 1, 'words numbered in order'));
      filled += sep + 1;
    }
    assert.ok(filled / (64 * all.length) > 0.7, `packing fills instances (${((100 * filled) / (64 * all.length)).toFixed(0)}%)`);
  });

  it('is deterministic: the same corpus, vocab and seed give byte-identical shards', async () => {
    const a = await prepare(options('det-a', { masking: 'static' }));
    const b = await prepare(options('det-b', { masking: 'static' }));
    const c = await prepare(options('det-c', { masking: 'static', seed: 2 }));
    assert.deepEqual(a.shards.map((s) => s.sha256), b.shards.map((s) => s.sha256));
    assert.notDeepEqual(a.shards.map((s) => s.sha256), c.shards.map((s) => s.sha256));
  });

  it('worker threads give byte-identical shards', async () => {
    for (const masking of ['dynamic', 'static'] as const) {
      const one = await prepare(options(`threads-1-${masking}`, { masking }));
      const three = await prepare(options(`threads-3-${masking}`, { masking, workers: 3 }));
      assert.deepEqual(three.shards, one.shards);
    }
    const s1 = await prepare(options('threads-1-s2s', { task: 'seq2seq' }));
    const s2 = await prepare(options('threads-2-s2s', { task: 'seq2seq', workers: 2 }));
    assert.deepEqual(s2.shards, s1.shards);
  });

  it('static masking writes bert4keras features; whole words at 15%, their tokens 80/10/10', async () => {
    const o = options('static', { masking: 'static', copies: 2 });
    const manifest = await prepare(o);
    assert.deepEqual(Object.keys(manifest.features), ['token_ids', 'mask_ids', 'document']);
    const dynamic = await prepare(options('static-src'));
    assert.equal(manifest.records, 2 * dynamic.records, 'two masked copies');
    const all = await instances(o.out, manifest);
    const half = all.length / 2;
    assert.deepEqual(all.slice(half).map((r) => r.document![0]), all.slice(0, half).map((r) => r.document![0]), 'a document keeps its index in every copy');
    for (const { token_ids: ids, mask_ids: masks } of all) {
      ids!.forEach((t, i) => {
        if (masks![i] === 0) return;
        assert.ok(i > 0 && t !== 0, 'never a special or padding position');
      });
    }
  });

  it('masking statistics over many draws: 15% of words, 80% [MASK] / 10% random / 10% kept, whole words only', async () => {
    const vocab = await Vocab.load(VOCAB);
    const manifest = await prepare(options('stats'));
    const all = await instances(path.join(dir, 'stats'), manifest);
    const specials = new Set([vocab.cls, vocab.sep, vocab.pad, vocab.mask, vocab.unk]);
    let words = 0;
    let chosenWords = 0;
    let tokens = 0;
    let masked = 0;
    let kept = 0;
    let replaced = 0;
    for (let epoch = 0; epoch < 20; epoch++) {
      all.forEach(({ token_ids: ids, word_ids: wordIds }, n) => {
        const m = maskWholeWords(ids!, wordIds!, seededRandom(7, epoch, n), { mask: vocab.mask, size: vocab.size, specials });
        const byWord = new Map<number, boolean[]>();
        wordIds!.forEach((w, i) => {
          if (w === 0) return assert.equal(m.maskIds[i], 0);
          if (!byWord.has(w)) byWord.set(w, []);
          byWord.get(w)!.push(m.maskIds[i] !== 0);
          if (m.maskIds[i] === 0) return assert.equal(m.tokenIds[i], ids![i]);
          assert.equal(m.maskIds[i], ids![i]! + 1);
          tokens++;
          if (m.tokenIds[i] === vocab.mask) masked++;
          else if (m.tokenIds[i] === ids![i]) kept++;
          else {
            replaced++;
            assert.ok(!specials.has(m.tokenIds[i]!), 'a random token is never special');
          }
        });
        for (const flags of byWord.values()) {
          words++;
          assert.ok(flags.every((f) => f === flags[0]), 'a word is masked whole or not at all');
          if (flags[0]) chosenWords++;
        }
      });
    }
    const near = (x: number, want: number, tol: number, what: string) => assert.ok(Math.abs(x - want) < tol, `${what}: ${x.toFixed(4)} vs ${want}`);
    assert.ok(words > 20_000, `${words} words`);
    near(chosenWords / words, 0.15, 0.01, 'chosen words');
    near(masked / tokens, 0.8, 0.015, '[MASK]');
    // a random draw can hit the original id (1 in the vocabulary size): counted as kept
    near(replaced / tokens, 0.1, 0.01, 'random');
    near(kept / tokens, 0.1, 0.01, 'kept');
  });

  it('cuts a document longer than an instance at word boundaries, and cuts a word only when it alone is too long', () => {
    const special = { cls: 2, sep: 3, pad: 0 };
    const sentence = { ids: [10, 11, 12, 13, 14, 15, 16, 17, 18], wordLengths: [2, 3, 1, 3] };
    const out = [...packDocument([sentence], 6, special)].map((i) => ({ ids: [...i.tokenIds], words: [...i.wordIds] }));
    assert.deepEqual(out, [
      { ids: [2, 10, 11, 3], words: [0, 1, 1, 0] },
      { ids: [2, 12, 13, 14, 15, 3], words: [0, 1, 1, 1, 2, 0] },
      { ids: [2, 16, 17, 18, 3], words: [0, 1, 1, 1, 0] },
    ]);
    const long = [...packDocument([{ ids: [20, 21, 22, 23, 24, 25, 26], wordLengths: [1, 6] }], 6, special)].map((i) => ({ ids: [...i.tokenIds], words: [...i.wordIds] }));
    assert.deepEqual(long, [
      { ids: [2, 20, 21, 22, 23, 3], words: [0, 1, 2, 2, 2, 0] },
      { ids: [2, 24, 25, 26, 3], words: [0, 1, 1, 1, 0] },
    ], 'a word longer than an instance is cut where the instance is full');
  });
});

describe('prepare (seq2seq)', () => {
  it('from .tsv and .jsonl pairs and from plain text split at a random point: [CLS] source [SEP] target [SEP], segments 0 then 1', async () => {
    const vocab = await Vocab.load(VOCAB);
    const tsv = path.join(dir, 'pairs.tsv');
    await writeFile(tsv, '学而时习之\t不亦说乎\n\n有朋自远方来\t不亦乐乎\n');
    const jsonl = path.join(dir, 'pairs.jsonl');
    await writeFile(jsonl, JSON.stringify({ source: '人不知而不愠', target: '不亦君子乎' }) + '\n');
    const o = options('s2s', { task: 'seq2seq', corpus: [tsv, jsonl, small], maxLength: 32 });
    const manifest = await prepare(o);
    assert.equal(manifest.masking, null);
    const all = await instances(o.out, manifest);
    const first = all[0]!;
    const text = (ids: number[]) => ids.map((id) => vocab.tokens[id]).join('');
    assert.equal(text(first.token_ids!), '[CLS]学而时习之[SEP]不亦说乎[SEP]');
    assert.deepEqual(first.segment_ids, [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
    assert.equal(text(all[2]!.token_ids!), '[CLS]人不知而不愠[SEP]不亦君子乎[SEP]');
    // each pair is a document, then the plain text's documents follow in corpus order
    assert.deepEqual(all.slice(0, 4).map((r) => r.document![0]), [0, 1, 2, 3]);
    assert.equal(manifest.documents, 3 + 40);
    for (const inst of all.slice(3)) {
      const ids = inst.token_ids!;
      const seps = ids.flatMap((t, i) => (t === vocab.sep ? [i] : []));
      assert.equal(seps.length, 2);
      assert.equal(seps[1], ids.length - 1, 'unpadded');
      assert.ok(seps[0]! >= 2 && seps[1]! > seps[0]! + 1, 'both parts non-empty');
      assert.ok(inst.segment_ids!.every((s, i) => s === (i > seps[0]! && i <= seps[1]! ? 1 : 0)));
    }
    // a document longer than an instance: windows, each split so that the target continues its source
    const oneLine = path.join(dir, 'one-line.txt');
    const plain = (await readFile(small, 'utf8')).replace(/\s+/g, '');
    await writeFile(oneLine, plain + '\n');
    const windows = await prepare(options('s2s-windows', { task: 'seq2seq', corpus: [oneLine], maxLength: 32 }));
    const expected = plain.length; // one token per character in this corpus
    assert.ok(windows.records >= Math.floor(expected / 29), `${windows.records} instances for ${expected} tokens`);
    const joined: number[] = [];
    for (const inst of await instances(path.join(dir, 's2s-windows'), windows)) {
      const ids = inst.token_ids!;
      const seps = ids.flatMap((t, i) => (t === vocab.sep ? [i] : []));
      joined.push(...ids.slice(1, seps[0]), ...ids.slice(seps[0]! + 1, seps[1]));
    }
    assert.equal(joined.length, expected, 'every token once, in order');
    assert.equal(plain.slice(0, 200), joined.slice(0, 200).map((id) => vocab.tokens[id]).join(''));
    await writeFile(tsv, '学而时习之 不亦说乎\n');
    await assert.rejects(prepare(options('s2s-bad', { task: 'seq2seq', corpus: [tsv] })), /pairs\.tsv:1: no tab between source and target/);
  });
});

describe('prepare: bad input', () => {
  it('refuses an existing output directory unless --force, and replaces it with --force', async () => {
    await prepare(options('exists'));
    await assert.rejects(prepare(options('exists')), /output directory .*exists; pass --force/);
    const again = await prepare(options('exists', { force: true, recordsPerShard: 1000 }));
    assert.deepEqual((await readdir(path.join(dir, 'exists'))).sort(), ['manifest.json', ...again.shards.map((s) => s.file)].sort());
  });

  it('an empty corpus, a missing corpus or a bad vocab is an error and leaves no manifest', async () => {
    const empty = path.join(dir, 'empty.txt');
    await writeFile(empty, '\n\n  \n');
    await assert.rejects(prepare(options('empty', { corpus: [empty] })), /gave no instances: it is empty/);
    assert.equal(existsSync(path.join(dir, 'empty', 'manifest.json')), false);
    await assert.rejects(prepare(options('missing', { corpus: [path.join(dir, 'nope.txt')] })), /corpus file .*nope\.txt does not exist/);
    const badVocab = path.join(dir, 'vocab.txt');
    await writeFile(badVocab, '[PAD]\n[UNK]\n[CLS]\n');
    await assert.rejects(prepare(options('badvocab', { vocab: badVocab })), /lacks \[SEP\], \[MASK\]/);
  });

  it('a failure in the middle (invalid UTF-8 in the second file) leaves neither a manifest nor a partial shard', async () => {
    const bad = path.join(dir, 'bad.txt');
    await writeFile(bad, Buffer.concat([Buffer.from('子曰\n'), Buffer.from([0xff, 0xfe])]));
    const o = options('killed', { corpus: [small, bad] });
    await assert.rejects(prepare(o), /bad\.txt is not valid UTF-8/);
    const left = await readdir(o.out);
    assert.ok(!left.includes('manifest.json'));
    assert.ok(left.every((f) => /^shard-\d+\.tfrecord$/.test(f)), `only complete shards remain: ${left.join(', ')}`);
  });
});

describe('pretrain prepare (CLI)', () => {
  const run = (args: string[]) => runScript(PRETRAIN_CLI, args, { timeout: 120_000 });

  it('writes shards and a manifest, reports what it wrote, refuses an existing --out (exit 2)', async () => {
    const out = path.join(dir, 'cli-out');
    const args = ['prepare', '--corpus', small, '--vocab', VOCAB, '--out', out, '--max-length', '64', '--workers', '2'];
    const r = await run(args);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /wrote \d+ mlm instances \(max length 64, dynamic masking\) in 1 shard\(s\)/, 'the result on stdout');
    assert.equal(r.stderr, '', 'stderr is for progress and warnings (none here: not a terminal, and quick)');
    const manifest = JSON.parse(await readFile(path.join(out, 'manifest.json'), 'utf8')) as Manifest;
    assert.equal(manifest.shards[0]!.records, manifest.records);
    const again = await run(args);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /cli-out exists; pass --force/);
    assert.doesNotMatch(again.stderr, /\n\s+at /);
    const badTask = await run(['prepare', '--corpus', small, '--vocab', VOCAB, '--out', path.join(dir, 'x'), '--task', 'nsp']);
    assert.equal(badTask.code, 2);
    assert.match(badTask.stderr, /Allowed choices are mlm, seq2seq/);
  });

  it('refuses options that would do nothing: --copies without static masking, --masking with seq2seq (exit 2)', async () => {
    const base = ['prepare', '--corpus', small, '--vocab', VOCAB, '--max-length', '32', '--no-progress'];
    const cases: [string[], RegExp][] = [
      [['--copies', '3'], /--copies 3 needs --masking static .*; drop --copies or add --masking static/],
      [['--copies', '1', '--masking', 'dynamic'], /--copies 1 needs --masking static/],
      [['--task', 'seq2seq', '--masking', 'static'], /--masking static applies to --task mlm only .*; drop --masking/],
      [['--task', 'seq2seq', '--copies', '2'], /--copies 2 needs --masking static \(seq2seq instances are not masked\); drop --copies$/m],
    ];
    for (const [extra, expected] of cases) {
      const out = path.join(dir, 'refused');
      const r = await run([...base, '--out', out, ...extra]);
      assert.equal(r.code, 2, `${extra.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, expected);
      assert.equal(r.stderr.trim().split('\n').length, 1, 'one line');
      assert.equal(existsSync(out), false, 'refused before writing anything');
    }
    const help = await run(['prepare', '--help']);
    assert.match(help.stdout, /--masking <mode>[\s\S]*\(default: dynamic\)/);
    assert.match(help.stdout, /--copies <n>[\s\S]*\(default: 1\)/);
    // the library refuses the same combinations for its callers
    await assert.rejects(prepare(options('api-copies', { copies: 3 })), /--copies 3 needs --masking static/);
    await assert.rejects(prepare(options('api-s2s', { task: 'seq2seq', masking: 'static' })), /--masking static applies to --task mlm only/);
    const ok = await run([...base, '--out', path.join(dir, 'static-copies'), '--masking', 'static', '--copies', '2']);
    assert.equal(ok.code, 0, ok.stderr);
    const manifest = JSON.parse(await readFile(path.join(dir, 'static-copies', 'manifest.json'), 'utf8')) as Manifest;
    assert.equal(manifest.masking?.copies, 2);
  });

  it('warns once about repeated vocabulary lines, naming the count and an example with its lines, and goes on', async () => {
    const vocabText = (await readFile(VOCAB, 'utf8')).split('\n');
    const repeated = path.join(dir, 'repeated-vocab.txt');
    // line 11 repeats line 7's token, line 12 repeats line 8's
    await writeFile(repeated, [...vocabText.slice(0, 10), vocabText[6], vocabText[7], ...vocabText.slice(10)].join('\n'));
    const r = await run(['prepare', '--corpus', small, '--vocab', repeated, '--out', path.join(dir, 'repeated-out'), '--max-length', '32', '--workers', '2']);
    assert.equal(r.code, 0, r.stderr);
    const warnings = r.stderr.trim().split('\n');
    assert.equal(warnings.length, 1, r.stderr);
    assert.match(warnings[0]!, new RegExp(`warning: vocabulary file .*repeated-vocab\\.txt has 2 repeated line\\(s\\), e\\.g\\. "${vocabText[6]}" on lines 7, 11; .*takes the id of its last line`));
    assert.match(r.stdout, /wrote \d+ mlm instances/);
  });
});
