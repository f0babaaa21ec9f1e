/**
 * npm run bench:trie -- the prefix tree of constrained decoding: a trie of random keys (1M
 * of 4 to 16 tokens by default, over a synthetic CJK vocabulary so that tokenizing is one
 * token a character) built from a TSV as `pretrain trie build` does, then from token ids
 * alone; its memory in bytes a key (values included) and its load time. Prints tables, the
 * command to reproduce, and one JSON line. `benchTrie` is what bench/decode.ts reuses.
 */
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Command, Option } from 'commander';
import { Vocab } from '../src/data/vocab.js';
import { buildTrieFromTsv, loadTrie, TrieBuilder, writeTrie } from '../src/decode/trie.js';
import { median, table } from './common.js';

export interface TrieBenchOptions {
  keys: number;
  minLength: number;
  maxLength: number;
  vocabSize: number;
  seed: number;
  /** Measured loads (median). */
  loads: number;
}

export const TRIE_BENCH_DEFAULTS: TrieBenchOptions = { keys: 1_000_000, minLength: 4, maxLength: 16, vocabSize: 21128, seed: 1, loads: 5 };

export interface TrieBenchResult {
  options: TrieBenchOptions;
  keys: number;
  nodes: number;
  tokens: number;
  /** The arrays of the trie in memory, values included. */
  trieBytes: number;
  /** Of which the value ids, offsets and text. */
  valueBytes: number;
  fileBytes: number;
  tsvMB: number;
  /** From the TSV: read, tokenize, build (what `pretrain trie build` does before writing). */
  tsvBuildKeysPerSec: number;
  /** From token ids: TrieBuilder.add + build. */
  idsBuildKeysPerSec: number;
  writeMs: number;
  loadMs: number;
  /** The figures the decode bench merges into its JSON line. */
  figures: { trieBytesPerKey: number; trieBuildKeysPerSec: number; trieLoadMs: number };
}

const SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];

/** Token i of the synthetic vocabulary (after the specials): CJK Unified Ideographs, then Extension A. */
function cjk(i: number): string {
  return String.fromCodePoint(i < 20992 ? 0x4e00 + i : 0x3400 + (i - 20992));
}

function lcg(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 4294967296;
  };
}

/** Random keys as token ids (after the specials), each with the value `Q<k>` (unique, like Wikidata ids). */
function* randomKeys(o: TrieBenchOptions): Generator<[Int32Array, string]> {
  const rand = lcg(o.seed);
  const key = new Int32Array(o.maxLength);
  const words = o.vocabSize - SPECIALS.length;
  for (let k = 0; k < o.keys; k++) {
    const n = o.minLength + Math.floor(rand() * (o.maxLength - o.minLength + 1));
    for (let i = 0; i < n; i++) key[i] = SPECIALS.length + Math.floor(rand() * words);
    yield [key.subarray(0, n), `Q${k}`];
  }
}

export async function benchTrie(options: Partial<TrieBenchOptions> = {}): Promise<TrieBenchResult> {
  const o = { ...TRIE_BENCH_DEFAULTS, ...options };
  if (o.vocabSize - SPECIALS.length > 20992 + 6592 || o.vocabSize <= SPECIALS.length) throw new Error(`--vocab-size must be ${SPECIALS.length + 1} to ${SPECIALS.length + 20992 + 6592}`);
  if (o.minLength < 1 || o.maxLength < o.minLength) throw new Error('need 1 <= --min-length <= --max-length');
  const dir = await mkdtemp(path.join(tmpdir(), 'bench-trie-'));
  try {
    const vocabText = `${[...SPECIALS, ...Array.from({ length: o.vocabSize - SPECIALS.length }, (_, i) => cjk(i))].join('\n')}\n`;
    const vocabFile = path.join(dir, 'vocab.txt');
    await writeFile(vocabFile, vocabText);
    const vocab = await Vocab.load(vocabFile);
    const tsv = path.join(dir, 'kb.tsv');
    const out = createWriteStream(tsv, { highWaterMark: 1 << 20 });
    let chunk: string[] = [];
    for (const [ids, value] of randomKeys(o)) {
      let key = '';
      for (const id of ids) key += cjk(id - SPECIALS.length);
      chunk.push(`${key}\t${value}\n`);
      if (chunk.length === 10_000) {
        if (!out.write(chunk.join(''))) await new Promise<void>((r) => out.once('drain', () => r()));
        chunk = [];
      }
    }
    out.end(chunk.join(''));
    await new Promise<void>((r, j) => out.once('finish', () => r()).once('error', j));
    const tsvBytes = (await stat(tsv)).size;

    // from the TSV, as the CLI does
    let t = performance.now();
    const report = await buildTrieFromTsv({ keys: tsv, vocab });
    const tsvSeconds = (performance.now() - t) / 1000;
    const trie = report.trie;
    const file = path.join(dir, 'kb.trie');
    t = performance.now();
    const fileBytes = await writeTrie(file, trie);
    const writeMs = performance.now() - t;

    // from token ids alone
    t = performance.now();
    const builder = new TrieBuilder({ vocabSize: vocab.size, vocabHash: vocab.hash });
    for (const [ids, value] of randomKeys(o)) builder.add(ids, value);
    const fromIds = builder.build();
    const idsSeconds = (performance.now() - t) / 1000;
    if (fromIds.nodeCount !== trie.nodeCount || fromIds.byteLength !== trie.byteLength) throw new Error('the trie from ids differs from the trie from the TSV');

    const loads: number[] = [];
    for (let i = 0; i < o.loads; i++) {
      t = performance.now();
      const loaded = await loadTrie(file, vocab);
      loads.push(performance.now() - t);
      if (loaded.nodeCount !== trie.nodeCount) throw new Error('the loaded trie differs');
    }
    const valueBytes = trie.valueStart.byteLength + trie.valueIds.byteLength + trie.stringOffsets.byteLength + trie.strings.byteLength;
    const tokens = trie.nodeCount - 1;
    const loadMs = median(loads);
    return {
      options: o,
      keys: trie.keyCount,
      nodes: trie.nodeCount,
      tokens,
      trieBytes: trie.byteLength,
      valueBytes,
      fileBytes,
      tsvMB: tsvBytes / 1e6,
      tsvBuildKeysPerSec: report.pairs / tsvSeconds,
      idsBuildKeysPerSec: o.keys / idsSeconds,
      writeMs,
      loadMs,
      figures: {
        trieBytesPerKey: Math.round((trie.byteLength / trie.keyCount) * 10) / 10,
        trieBuildKeysPerSec: Math.round(report.pairs / tsvSeconds),
        trieLoadMs: Math.round(loadMs * 10) / 10,
      },
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The tables of a result (stdout). */
export function printTrieBench(r: TrieBenchResult): void {
  const o = r.options;
  const perKey = (b: number) => (b / r.keys).toFixed(1);
  table(`Prefix tree: ${r.keys.toLocaleString('en')} random keys of ${o.minLength}-${o.maxLength} tokens, vocabulary ${o.vocabSize}, values Q<k>`, ['what', 'count', 'MiB', 'bytes/key'], [
    ['nodes (token, firstChild, key-end bits + rank)', r.nodes, ((r.trieBytes - r.valueBytes) / 2 ** 20).toFixed(1), perKey(r.trieBytes - r.valueBytes)],
    ['values (ranges, ids, offsets, UTF-8 text)', r.keys, (r.valueBytes / 2 ** 20).toFixed(1), perKey(r.valueBytes)],
    ['trie in memory (target <= 100 bytes/key)', '', (r.trieBytes / 2 ** 20).toFixed(1), perKey(r.trieBytes)],
    ['file (header, sections, CRC32C)', '', (r.fileBytes / 2 ** 20).toFixed(1), perKey(r.fileBytes)],
  ]);
  table('Build and load', ['step', 'keys/s', 'ms'], [
    [`build from the TSV (${r.tsvMB.toFixed(1)} MB: read, tokenize, build)`, r.tsvBuildKeysPerSec.toFixed(0), ((r.keys / r.tsvBuildKeysPerSec) * 1000).toFixed(0)],
    ['build from token ids (TrieBuilder)', r.idsBuildKeysPerSec.toFixed(0), ((o.keys / r.idsBuildKeysPerSec) * 1000).toFixed(0)],
    ['write (atomic, CRC32C)', '', r.writeMs.toFixed(0)],
    [`load (read, CRC32C, views; median of ${o.loads}; target < 1000 ms)`, '', r.loadMs.toFixed(1)],
  ]);
}

const program = new Command('bench:trie')
  .description('prefix tree: bytes/key, build keys/s, load ms')
  .addOption(new Option('--keys <n>', 'random keys').default(TRIE_BENCH_DEFAULTS.keys).argParser(Number))
  .addOption(new Option('--min-length <n>', 'fewest tokens a key').default(TRIE_BENCH_DEFAULTS.minLength).argParser(Number))
  .addOption(new Option('--max-length <n>', 'most tokens a key').default(TRIE_BENCH_DEFAULTS.maxLength).argParser(Number))
  .addOption(new Option('--vocab-size <n>', 'tokens in the synthetic vocabulary').default(TRIE_BENCH_DEFAULTS.vocabSize).argParser(Number))
  .addOption(new Option('--seed <n>', 'of the random keys').default(TRIE_BENCH_DEFAULTS.seed).argParser(Number))
  .addOption(new Option('--loads <n>', 'measured loads (median)').default(TRIE_BENCH_DEFAULTS.loads).argParser(Number));

if (process.argv[1] && pathToFileURL(path.resolve(process.argv[1])).href === import.meta.url) {
  const opts = program.parse().opts<TrieBenchOptions>();
  const result = await benchTrie(opts);
  printTrieBench(result);
  console.log(`\nreproduce: npm run bench:trie -- ${process.argv.slice(2).join(' ')}`.trimEnd());
  console.log(JSON.stringify(result.figures));
}

export const TRIE_BENCH_SCRIPT = fileURLToPath(import.meta.url);
