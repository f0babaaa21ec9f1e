import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { BertTokenizer } from '../src/data/tokenizer.js';
import { Vocab } from '../src/data/vocab.js';
import { buildTrieFromTsv, buildWarnings, loadTrie, type Trie, TrieBuilder, TrieError, writeTrie } from '../src/decode/trie.js';
import { loadTrieConstraint, TrieConstraint } from '../src/decode/trie-constraint.js';
import { lcg, PRETRAIN_CLI, runScript, SAMPLE_VOCAB } from './helpers.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'decode-trie-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const ID = { vocabSize: 50, vocabHash: 'h'.repeat(64) };

/** Random keys over a tiny vocabulary: many shared prefixes, keys that prefix others, repeated keys with several values. */
function randomPairs(seed: number, count: number, vocab = 12, maxLength = 6): [number[], string][] {
  const rand = lcg(seed);
  const pairs: [number[], string][] = [];
  for (let i = 0; i < count; i++) {
    const n = 1 + Math.floor(rand() * maxLength);
    const key = Array.from({ length: n }, () => 5 + Math.floor(rand() * (vocab - 5)));
    pairs.push([key, `v${Math.floor(rand() * count)}`]);
  }
  // a key that is a prefix of another, both with values; one pair repeated
  pairs.push([[5, 6], 'short'], [[5, 6, 7], 'long'], [[5, 6], 'short'], [[5, 6], 'second']);
  return pairs;
}

/** What the trie should say: each key's distinct values in the order their text first appeared in the input. */
function reference(pairs: [number[], string][]): Map<string, string[]> {
  const firstSeen = new Map<string, number>();
  for (const [, v] of pairs) if (!firstSeen.has(v)) firstSeen.set(v, firstSeen.size);
  const keys = new Map<string, Set<string>>();
  for (const [k, v] of pairs) {
    const name = k.join(',');
    if (!keys.has(name)) keys.set(name, new Set());
    keys.get(name)!.add(v);
  }
  return new Map([...keys].map(([k, vs]) => [k, [...vs].sort((a, b) => firstSeen.get(a)! - firstSeen.get(b)!)]));
}

function build(pairs: [number[], string][], id = ID): Trie {
  const b = new TrieBuilder(id);
  for (const [k, v] of pairs) b.add(k, v);
  return b.build();
}

/** Every key round-trips, every prefix allows exactly the next tokens of its keys, and canEnd is true exactly at keys. */
function checkAgainst(trie: Trie, pairs: [number[], string][]): void {
  const ref = reference(pairs);
  assert.equal(trie.keyCount, ref.size);
  for (const [name, values] of ref) {
    const key = name.split(',').map(Number);
    assert.deepEqual(trie.lookup(key), values, `values of key ${name}`);
  }
  const c = new TrieConstraint(trie);
  const prefixes = new Map<string, Set<number>>(); // prefix -> next tokens
  for (const name of ref.keys()) {
    const key = name.split(',').map(Number);
    for (let d = 0; d <= key.length; d++) {
      const p = key.slice(0, d).join(',');
      if (!prefixes.has(p)) prefixes.set(p, new Set());
      if (d < key.length) prefixes.get(p)!.add(key[d]!);
    }
  }
  assert.equal(trie.nodeCount, prefixes.size, 'one node per distinct prefix');
  for (const [p, next] of prefixes) {
    const tokens = p === '' ? [] : p.split(',').map(Number);
    let state: number | undefined = c.start();
    for (const t of tokens) state = c.advance(state!, t);
    assert.notEqual(state, undefined, `prefix ${p} is in the trie`);
    assert.deepEqual([...c.allowed(state!)], [...next].sort((a, b) => a - b), `allowed after [${p}]`);
    assert.equal(c.canEnd(state!), ref.has(p), `canEnd after [${p}]`);
    assert.deepEqual(c.valuesAt(state!), ref.get(p) ?? []);
    // a token that continues no key has no state: such a beam cannot exist
    for (let t = 0; t < trie.info.vocabSize; t++) if (!next.has(t)) assert.equal(c.advance(state!, t), undefined);
  }
}

describe('prefix tree: structure', () => {
  it('every key round-trips with its values; allowed children and canEnd are exact (built, then saved and loaded)', async () => {
    const pairs = randomPairs(7, 3000);
    const trie = build(pairs);
    checkAgainst(trie, pairs);
    const file = path.join(dir, 'random.trie');
    const bytes = await writeTrie(file, trie);
    assert.equal((await stat(file)).size, bytes);
    const loaded = await loadTrie(file, { size: ID.vocabSize, hash: ID.vocabHash });
    checkAgainst(loaded, pairs);
    assert.deepEqual(loaded.info, trie.info);
  });

  it('a key that prefixes longer keys can end ([SEP] allowed) while its children stay allowed; keys of one value or several', () => {
    const trie = build([
      [[5, 6], 'short'],
      [[5, 6, 7], 'long'],
      [[5, 6, 8, 9], 'longer'],
      [[10], 'a'],
      [[10], 'b'],
      [[10], 'a'],
    ]);
    const c = new TrieConstraint(trie);
    const n5 = c.advance(c.start(), 5)!;
    assert.equal(c.canEnd(n5), false);
    assert.deepEqual([...c.allowed(n5)], [6]);
    const n56 = c.advance(n5, 6)!;
    assert.equal(c.canEnd(n56), true, 'a key ends here even though it has children');
    assert.deepEqual([...c.allowed(n56)], [7, 8]);
    assert.deepEqual(c.valuesAt(n56), ['short']);
    const leaf = c.advance(n56, 7)!;
    assert.equal(c.canEnd(leaf), true);
    assert.deepEqual([...c.allowed(leaf)], [], 'at a leaf only [SEP] may follow');
    assert.equal(c.canEnd(c.advance(n56, 8)!), false);
    assert.deepEqual(trie.lookup([10]), ['a', 'b'], 'duplicate keys keep every distinct value, in first-seen order');
    assert.equal(c.canEnd(c.start()), false);
    assert.deepEqual([...c.allowed(c.start())], [5, 10]);
    assert.equal(c.advance(c.start(), 6), undefined);
    assert.equal(trie.find([5, 6, 9]), undefined);
    assert.deepEqual(trie.lookup([5]), []);
    assert.equal(trie.info.pairs, 5);
    assert.equal(trie.info.strings, 5);
  });

  it('uses 16-bit token ids under 65,536 tokens and 32-bit ids above, recorded in the header', async () => {
    assert.equal(build([[[5], 'x']]).info.tokenType, 'uint16');
    const big = { vocabSize: 70_000, vocabHash: 'b'.repeat(64) };
    const pairs: [number[], string][] = [
      [[69_999, 65_536], 'high'],
      [[69_999], 'one'],
      [[3, 65_535], 'low'],
    ];
    const trie = build(pairs, big);
    assert.equal(trie.info.tokenType, 'int32');
    const file = path.join(dir, 'big.trie');
    await writeTrie(file, trie);
    const loaded = await loadTrie(file);
    assert.ok(loaded.tokens instanceof Int32Array);
    assert.deepEqual(loaded.lookup([69_999, 65_536]), ['high']);
    assert.deepEqual(loaded.lookup([3, 65_535]), ['low']);
    assert.deepEqual([...new TrieConstraint(loaded).allowed(0)], [3, 69_999]);
    assert.throws(() => new TrieBuilder(big).add([70_000], 'x'), /token id 70000 is outside the vocabulary \(0 to 69999\)/);
  });

  it('an empty trie (no keys) is refused at build', () => {
    assert.throws(() => new TrieBuilder(ID).build(), (e: unknown) => e instanceof TrieError && /no keys/.test(e.message));
    assert.throws(() => new TrieBuilder(ID).add([], 'x'), /empty key/);
  });

  it('memory: 100,000 random keys of 4-16 tokens (vocabulary 21128) take under 100 bytes a key, values included', () => {
    const rand = lcg(3);
    const b = new TrieBuilder({ vocabSize: 21128, vocabHash: 'c'.repeat(64) });
    const key = new Int32Array(16);
    for (let k = 0; k < 100_000; k++) {
      const n = 4 + Math.floor(rand() * 13);
      for (let i = 0; i < n; i++) key[i] = 5 + Math.floor(rand() * 21123);
      b.add(key.subarray(0, n), `Q${k}`);
    }
    const trie = b.build();
    assert.equal(trie.keyCount, 100_000);
    const bytes = trie.arrays().reduce((n, [, a]) => n + a.byteLength, 0);
    assert.equal(bytes, trie.byteLength);
    const perKey = bytes / trie.keyCount;
    assert.ok(perKey < 100, `${perKey.toFixed(1)} bytes/key`);
  });
});

describe('prefix tree: file', () => {
  let file: string;
  let good: Buffer;
  before(async () => {
    file = path.join(dir, 'good.trie');
    await writeTrie(file, build(randomPairs(11, 500)));
    good = await readFile(file);
  });

  const corrupted = async (name: string, bytes: Uint8Array): Promise<string> => {
    const f = path.join(dir, name);
    await writeFile(f, bytes);
    return f;
  };

  it('a flipped byte fails the checksum, naming the file', async () => {
    for (const at of [good.length >> 1, good.length - 2, 40]) {
      const bad = Buffer.from(good);
      bad[at]! ^= 0x10;
      const f = await corrupted(`flipped-${at}.trie`, bad);
      await assert.rejects(loadTrie(f), (e: unknown) => e instanceof TrieError && e.corrupt && e.message.includes(f) && /checksum mismatch|corrupt/.test(e.message), `byte ${at}`);
    }
  });

  it('a truncated file says truncated, naming the file', async () => {
    for (const size of [good.length - 1, good.length >> 1, 30, 5, 0]) {
      const f = await corrupted(`truncated-${size}.trie`, good.subarray(0, size));
      await assert.rejects(loadTrie(f), (e: unknown) => e instanceof TrieError && e.corrupt && e.message.includes(f) && /truncated|too short/.test(e.message), `size ${size}`);
    }
  });

  it('wrong magic or version is named as such', async () => {
    const magic = Buffer.from(good);
    magic.write('NOTATRIE', 0, 'latin1');
    const f1 = await corrupted('magic.trie', magic);
    await assert.rejects(loadTrie(f1), new RegExp(`${f1.replace(/[.\\/]/g, '\\$&')} is not a trie file`));
    const version = Buffer.from(good);
    version.writeUInt32LE(9, 8);
    const f2 = await corrupted('version.trie', version);
    await assert.rejects(loadTrie(f2), /is trie format version 9; this version of tfjs-pretrain reads version 1: rebuild it/);
    await assert.rejects(loadTrie(path.join(dir, 'missing.trie')), /trie file .*missing\.trie does not exist/);
  });

  it('loads with views onto the file bytes (no rebuild): the arrays share one buffer', async () => {
    const trie = await loadTrie(file);
    const buffers = new Set(trie.arrays().map(([, a]) => a.buffer));
    assert.equal(buffers.size, 1);
  });
});

describe('prefix tree: from a TSV with the BERT tokenizer', () => {
  let vocab: Vocab;
  before(async () => {
    vocab = await Vocab.load(SAMPLE_VOCAB);
  });

  const tsv = async (name: string, text: string): Promise<string> => {
    const f = path.join(dir, name);
    await writeFile(f, text);
    return f;
  };

  it('tokenizes keys as the model does (no [CLS]/[SEP]), keeps the value as the rest of the line, several values per key', async () => {
    const f = await tsv('kb.tsv', '孔子\t春秋\n孔子\t鲁国\n\n孔子弟子\t颜回\t七十二贤\n学而\t论语\n学而\t论语\n');
    const report = await buildTrieFromTsv({ keys: f, vocab });
    const tok = new BertTokenizer(vocab);
    const t = report.trie;
    assert.deepEqual(t.lookup(tok.tokenize('孔子').ids), ['春秋', '鲁国']);
    assert.deepEqual(t.lookup(tok.tokenize('孔子弟子').ids), ['颜回\t七十二贤']);
    assert.deepEqual(t.lookup(tok.tokenize('学而').ids), ['论语']);
    assert.equal(t.keyCount, 3);
    assert.equal(report.pairs, 5);
    assert.equal(report.blankLines, 1);
    assert.equal(t.info.vocabSize, vocab.size);
    assert.equal(t.info.vocabHash, vocab.hash);
    assert.equal(t.info.lowerCase, true);
    const c = new TrieConstraint(t);
    const node = c.advance(c.advance(c.start(), tok.tokenize('孔').ids[0]!)!, tok.tokenize('子').ids[0]!)!;
    assert.ok(c.canEnd(node));
    assert.deepEqual([...c.allowed(node)], tok.tokenize('弟').ids);
    assert.ok(!t.tokens.includes(vocab.sep) && !t.tokens.includes(vocab.cls));
    assert.deepEqual(buildWarnings(report, f), []);
  });

  it('an empty TSV (or only blank lines) is refused with a clear error', async () => {
    for (const [name, text] of [['empty.tsv', ''], ['blank.tsv', '\n  \n\n']] as const) {
      const f = await tsv(name, text);
      await assert.rejects(buildTrieFromTsv({ keys: f, vocab }), new RegExp(`${name} has no keys to build a trie from: it is empty`));
    }
    const f = await tsv('nokeys.tsv', '\u0001\tvalue\n');
    await assert.rejects(buildTrieFromTsv({ keys: f, vocab }), /has no keys to build a trie from: its 1 line\(s\) have only keys without tokens/);
  });

  it('a line without a TAB is refused with file:line', async () => {
    const f = await tsv('notab.tsv', '孔子\t春秋\n孔子 春秋\n');
    await assert.rejects(buildTrieFromTsv({ keys: f, vocab }), /notab\.tsv:2: no TAB in "孔子 春秋"; each line is key<TAB>value/);
  });

  it('keys with [UNK] are kept and counted with a warning; --strict refuses the first, naming file:line and the characters', async () => {
    const f = await tsv('unk.tsv', '孔子\t春秋\nqqq 孔\tx\n孔子\t鲁国\n𠀋子\ty\n');
    const report = await buildTrieFromTsv({ keys: f, vocab });
    assert.equal(report.unknownKeys.count, 2);
    assert.equal(report.unknownKeys.tokens, 2);
    assert.equal(report.unknownKeys.firstLine, 2);
    const [warning] = buildWarnings(report, f);
    assert.match(warning!, /2 of 4 key line\(s\) have \[UNK\] tokens \(2 in all\), first .*unk\.tsv:2: "qqq 孔" \("qqq"\); they are kept/);
    assert.deepEqual(report.trie.lookup([vocab.unk, vocab.ids.get('孔')!]), ['x']);
    await assert.rejects(buildTrieFromTsv({ keys: f, vocab, strict: true }), /unk\.tsv:2: the key "qqq 孔" has 1 \[UNK\] token\(s\) \("qqq" not in vocabulary file .*\); without --strict/);
  });

  it('a trie built with one vocabulary is refused with another (size and hash in the header), naming the file', async () => {
    const f = await tsv('v.tsv', '孔子\t春秋\n');
    const file = path.join(dir, 'v.trie');
    await writeTrie(file, (await buildTrieFromTsv({ keys: f, vocab })).trie);
    const c = await loadTrieConstraint(file, vocab);
    assert.equal(c.canEnd(c.start()), false);
    const bigger = Vocab.fromText(`${vocab.tokens.join('\n')}\nextra\n`, 'vocabulary file other.txt');
    await assert.rejects(loadTrieConstraint(file, bigger), /trie file .*v\.trie was built with another vocabulary \(3275 tokens, sha256 [0-9a-f]{12}\.\.\.\) than vocabulary file other\.txt \(3276 tokens/);
    // same size, other tokens: the hash tells
    const swapped = [...vocab.tokens];
    [swapped[10], swapped[11]] = [swapped[11]!, swapped[10]!];
    await assert.rejects(loadTrieConstraint(file, Vocab.fromText(`${swapped.join('\n')}\n`)), /was built with another vocabulary \(3275 tokens.*\(3275 tokens/);
    await assert.rejects(loadTrieConstraint(file, { size: vocab.size, hash: '0'.repeat(64) }), (e: unknown) => e instanceof TrieError && !e.corrupt);
  });
});

describe('pretrain trie (CLI)', () => {
  it('build writes the trie and a summary; inspect prints its facts; bad input exits 2, a corrupt file 1', async () => {
    const kb = path.join(dir, 'cli.tsv');
    await writeFile(kb, '孔子\t春秋\n孔子弟子\t颜回\nqqq\tx\n');
    const out = path.join(dir, 'cli.trie');
    const r = await runScript(PRETRAIN_CLI, ['trie', 'build', '--vocab', SAMPLE_VOCAB, '--keys', kb, '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^wrote .*cli\.trie: 3 keys \(3 lines, 3 distinct key-value pairs, 3 distinct values\), \d+ nodes, longest key 4 tokens; [\d.]+ MiB, [\d.]+ bytes\/key/);
    assert.match(r.stderr, /pretrain: warning: 1 of 3 key line\(s\) have \[UNK\] tokens/);
    const again = await runScript(PRETRAIN_CLI, ['trie', 'build', '--vocab', SAMPLE_VOCAB, '--keys', kb, '--out', out]);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /exists; pass --force/);
    const strict = await runScript(PRETRAIN_CLI, ['trie', 'build', '--vocab', SAMPLE_VOCAB, '--keys', kb, '--out', out, '--force', '--strict']);
    assert.equal(strict.code, 2);
    assert.match(strict.stderr, /^pretrain: error: .*cli\.tsv:3: the key "qqq" has 1 \[UNK\]/);
    const empty = path.join(dir, 'cli-empty.tsv');
    await writeFile(empty, '');
    const e = await runScript(PRETRAIN_CLI, ['trie', 'build', '--vocab', SAMPLE_VOCAB, '--keys', empty, '--out', path.join(dir, 'e.trie')]);
    assert.equal(e.code, 2);
    assert.match(e.stderr, /has no keys to build a trie from/);

    const info = await runScript(PRETRAIN_CLI, ['trie', 'inspect', out, '--vocab', SAMPLE_VOCAB]);
    assert.equal(info.code, 0, info.stderr);
    const facts = JSON.parse(info.stdout) as Record<string, unknown>;
    assert.equal(facts['keys'], 3);
    assert.equal(facts['vocabSize'], 3275);
    assert.equal(facts['checksum'], 'ok');
    assert.equal(facts['vocab'], 'matches');

    const bad = Buffer.from(await readFile(out));
    bad[bad.length - 10]! ^= 1;
    const badFile = path.join(dir, 'cli-bad.trie');
    await writeFile(badFile, bad);
    const c = await runScript(PRETRAIN_CLI, ['trie', 'inspect', badFile]);
    assert.equal(c.code, 1);
    assert.match(c.stderr, /^pretrain: error: trie file .*cli-bad\.trie is corrupt: checksum mismatch/);
  });
});

describe('bench:trie', () => {
  it('prints tables and ends with the reproduce line and one JSON line of the three figures (small)', async () => {
    const script = fileURLToPath(new URL('../bench/trie.js', import.meta.url));
    const r = await runScript(script, ['--keys', '3000', '--loads', '1'], { timeout: 120_000 });
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(r.stdout, /trie in memory/);
    assert.match(lines.at(-2)!, /^reproduce: npm run bench:trie -- --keys 3000/);
    const figures = JSON.parse(lines.at(-1)!) as Record<string, number>;
    assert.deepEqual(Object.keys(figures), ['trieBytesPerKey', 'trieBuildKeysPerSec', 'trieLoadMs']);
    assert.ok(figures['trieBytesPerKey']! > 0 && figures['trieBytesPerKey']! < 100);
    assert.ok(figures['trieBuildKeysPerSec']! > 0);
    assert.ok(figures['trieLoadMs']! >= 0);
  });
});
