/**
 * A compact prefix tree over token-id sequences, for constrained decoding (a decoder may
 * only emit a key of a knowledge base, then [SEP]), with each key's values (KB objects).
 *
 * Layout: flat typed arrays, no JS object per node. Nodes are numbered breadth-first with
 * the children of a node in ascending token order, so the children of node n are the nodes
 * `firstChild[n] .. firstChild[n + 1] - 1` and `tokens[c]` is the token on the edge into c
 * (sorted, so a child is found by binary search). Node 0 is the root. Whether a key ends at
 * a node is one bit (`keyEndBits`); the rank of that bit among the set ones (`keyEndRank`
 * holds the count before each 32-bit word) indexes `valueStart`, the range of the node's
 * value ids in `valueIds`; a value id is a string in `strings` (UTF-8, each distinct
 * string once) from `stringOffsets[id]` to `stringOffsets[id + 1]`. That is about 6 bytes a
 * node with 16-bit token ids, plus 8 bytes and the text per value.
 *
 * File (`.trie`, little-endian): the 8 bytes `TFJSTRIE`, the format version (u32), the
 * byte length H of the header (u32), the header (JSON, space-padded so the sections start
 * 8-byte aligned: vocabulary size and SHA-256, counts, and each section's dtype, offset
 * from the end of the header, and length in elements), the sections, and the CRC32C of
 * everything before it (u32). Loading is one read, the checksum, and views onto the bytes:
 * nothing is rebuilt.
 */
import { crc32c } from '@node-rs/crc32';
import { createReadStream, promises as fs } from 'node:fs';
import { endianness } from 'node:os';
import { writeFileAtomically } from '../checkpoint/atomic-write.js';
import { decodeLines } from '../data/corpus.js';
import { BertTokenizer } from '../data/tokenizer.js';
import type { Vocab } from '../data/vocab.js';

export const TRIE_MAGIC = 'TFJSTRIE';
export const TRIE_VERSION = 1;
const PREFIX_BYTES = 16; // magic, version, header length
const CRC_BYTES = 4;

/**
 * A trie that cannot be built or loaded. `corrupt`: the file is damaged (truncated,
 * checksum, inconsistent), exit 1; otherwise the input or its use is wrong, exit 2.
 */
export class TrieError extends Error {
  override name = 'TrieError';
  constructor(
    message: string,
    readonly corrupt = false,
  ) {
    super(message);
  }
}

/** Token ids: 16 bits when the vocabulary has fewer than 65,536 tokens. */
export type TokenArray = Uint16Array | Int32Array;
export type TokenType = 'uint16' | 'int32';

/** What ties a trie to a vocabulary: its size and the SHA-256 of its text (`Vocab.hash`). */
export interface VocabIdentity {
  readonly size: number;
  readonly hash: string;
  /** For messages: where the vocabulary came from. */
  readonly source?: string;
}

/** The facts of a trie: what its header records besides the section table. */
export interface TrieInfo {
  readonly vocabSize: number;
  /** SHA-256 of the vocabulary text, hex. */
  readonly vocabHash: string;
  /** Whether keys were lower-cased (BERT uncased); null when built from token ids. */
  readonly lowerCase: boolean | null;
  readonly tokenType: TokenType;
  /** Distinct keys (= nodes where a key ends). */
  readonly keys: number;
  /** Distinct (key, value) pairs. */
  readonly pairs: number;
  /** Distinct value strings. */
  readonly strings: number;
  /** Nodes, the root included. */
  readonly nodes: number;
  /** Tokens of the longest key. */
  readonly maxDepth: number;
}

interface SectionEntry {
  name: SectionName;
  dtype: 'uint8' | 'uint16' | 'int32' | 'uint32';
  /** Bytes from the end of the header. */
  offset: number;
  /** Elements. */
  length: number;
}

interface TrieHeader extends TrieInfo {
  format: 'tfjs-pretrain-trie';
  /** Bytes of the sections with their padding: the file is 16 + header + dataBytes + 4 bytes. */
  dataBytes: number;
  sections: SectionEntry[];
}

const SECTION_NAMES = ['tokens', 'firstChild', 'keyEndBits', 'keyEndRank', 'valueStart', 'valueIds', 'stringOffsets', 'strings'] as const;
type SectionName = (typeof SECTION_NAMES)[number];

function popcount(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  x = (x + (x >>> 4)) & 0x0f0f0f0f;
  return Math.imul(x, 0x01010101) >>> 24;
}

const utf8 = new TextDecoder();

/** A built or loaded prefix tree; read-only. See the module comment for the layout. */
export class Trie {
  constructor(
    readonly info: TrieInfo,
    readonly tokens: TokenArray,
    readonly firstChild: Uint32Array,
    readonly keyEndBits: Uint32Array,
    readonly keyEndRank: Uint32Array,
    readonly valueStart: Uint32Array,
    readonly valueIds: Uint32Array,
    readonly stringOffsets: Uint32Array,
    readonly strings: Uint8Array,
  ) {}

  get nodeCount(): number {
    return this.info.nodes;
  }

  get keyCount(): number {
    return this.info.keys;
  }

  /** Bytes of all the arrays (nodes, key ends, values, strings): the trie's memory. */
  get byteLength(): number {
    return this.arrays().reduce((n, [, a]) => n + a.byteLength, 0);
  }

  /** The sections in file order. */
  arrays(): [SectionName, TokenArray | Uint32Array | Uint8Array][] {
    return [
      ['tokens', this.tokens],
      ['firstChild', this.firstChild],
      ['keyEndBits', this.keyEndBits],
      ['keyEndRank', this.keyEndRank],
      ['valueStart', this.valueStart],
      ['valueIds', this.valueIds],
      ['stringOffsets', this.stringOffsets],
      ['strings', this.strings],
    ];
  }

  /** The tokens that may follow `node`, ascending (a view, not a copy). */
  childTokens(node: number): TokenArray {
    return this.tokens.subarray(this.firstChild[node], this.firstChild[node + 1]);
  }

  /** The child of `node` along `token`, or -1. */
  child(node: number, token: number): number {
    let lo = this.firstChild[node]!;
    let hi = this.firstChild[node + 1]! - 1;
    const tokens = this.tokens;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const t = tokens[mid]!;
      if (t === token) return mid;
      if (t < token) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  /** Whether a key ends at `node` (it may still have children: a key that prefixes others). */
  isKeyEnd(node: number): boolean {
    return ((this.keyEndBits[node >>> 5]! >>> (node & 31)) & 1) === 1;
  }

  /** The node a token sequence leads to, or undefined when it leaves the trie. */
  find(tokens: ArrayLike<number>): number | undefined {
    let node = 0;
    for (let i = 0; i < tokens.length; i++) {
      node = this.child(node, tokens[i]!);
      if (node < 0) return undefined;
    }
    return node;
  }

  /** The value ids of the key ending at `node` (empty where none ends). */
  valueIdsAt(node: number): Uint32Array {
    if (!this.isKeyEnd(node)) return this.valueIds.subarray(0, 0);
    const w = node >>> 5;
    const rank = this.keyEndRank[w]! + popcount(this.keyEndBits[w]! & ((1 << (node & 31)) - 1));
    return this.valueIds.subarray(this.valueStart[rank], this.valueStart[rank + 1]);
  }

  /** A value string by id. */
  value(id: number): string {
    return utf8.decode(this.strings.subarray(this.stringOffsets[id], this.stringOffsets[id + 1]));
  }

  /** The values of the key ending at `node`, in the order their text first appeared in the input; empty where no key ends. */
  valuesAt(node: number): string[] {
    return Array.from(this.valueIdsAt(node), (id) => this.value(id));
  }

  /** The values of a key given as token ids; empty when it is not a key. */
  lookup(tokens: ArrayLike<number>): string[] {
    const node = this.find(tokens);
    return node === undefined ? [] : this.valuesAt(node);
  }
}

/** A typed array of at least `need` elements holding `used` of `a`'s (doubling). */
function grow<T extends Uint8Array | Uint16Array | Int32Array | Uint32Array>(a: T, used: number, need: number): T {
  if (need <= a.length) return a;
  let size = Math.max(a.length * 2, 1024);
  while (size < need) size *= 2;
  const b = new (a.constructor as new (n: number) => T)(size);
  b.set(a.subarray(0, used));
  return b;
}

/** Distinct strings, UTF-8 in one blob: an open-addressing hash set over the blob's bytes, no JS string kept. */
class StringTable {
  blob = new Uint8Array(1 << 16);
  bytes = 0;
  offsets = new Uint32Array(1024); // offsets[id] .. offsets[id + 1]
  count = 0;
  private hashes = new Uint32Array(1024);
  private table = new Int32Array(1 << 12).fill(-1);
  private readonly encoder = new TextEncoder();

  intern(s: string): number {
    this.blob = grow(this.blob, this.bytes, this.bytes + s.length * 3);
    const start = this.bytes;
    const written = this.encoder.encodeInto(s, this.blob.subarray(start)).written;
    const end = start + written;
    const blob = this.blob;
    let h = 0x811c9dc5;
    for (let i = start; i < end; i++) h = Math.imul(h ^ blob[i]!, 0x01000193);
    h >>>= 0;
    const mask = this.table.length - 1;
    let slot = h & mask;
    for (let id = this.table[slot]!; id !== -1; slot = (slot + 1) & mask, id = this.table[slot]!) {
      if (this.hashes[id] !== h) continue;
      const a = this.offsets[id]!;
      if (this.offsets[id + 1]! - a !== written) continue;
      let same = true;
      for (let i = 0; i < written; i++) {
        if (blob[a + i] !== blob[start + i]) {
          same = false;
          break;
        }
      }
      if (same) return id; // the bytes just written are left to be overwritten
    }
    const id = this.count++;
    this.offsets = grow(this.offsets, id + 1, id + 2);
    this.hashes = grow(this.hashes, id, id + 1);
    this.offsets[id + 1] = end;
    this.hashes[id] = h;
    this.bytes = end;
    this.table[slot] = id;
    if (this.count * 2 > this.table.length) this.rehash();
    return id;
  }

  private rehash(): void {
    const table = new Int32Array(this.table.length * 2).fill(-1);
    const mask = table.length - 1;
    for (let id = 0; id < this.count; id++) {
      let slot = this.hashes[id]! & mask;
      while (table[slot] !== -1) slot = (slot + 1) & mask;
      table[slot] = id;
    }
    this.table = table;
  }
}

export interface TrieBuilderOptions {
  vocabSize: number;
  vocabHash: string;
  lowerCase?: boolean | null;
}

/**
 * Collects (key tokens, value) pairs, then builds the trie: all key tokens in one growing
 * pool with offsets, values interned once, the keys sorted lexicographically, the nodes
 * laid out level by level. Memory while collecting: the tokens (2 or 4 bytes each), 8 bytes
 * a key and the distinct value text; one use.
 */
export class TrieBuilder {
  readonly tokenType: TokenType;
  private pool: TokenArray;
  private poolUsed = 0;
  private keyStart = new Uint32Array(1024); // key k: pool[keyStart[k] .. keyStart[k + 1]]
  private keyValue = new Uint32Array(1024);
  private count = 0;
  private readonly strings = new StringTable();
  private built = false;

  constructor(readonly options: TrieBuilderOptions) {
    if (!Number.isSafeInteger(options.vocabSize) || options.vocabSize < 1) throw new TrieError(`vocabulary size must be a positive integer, got ${options.vocabSize}`);
    this.tokenType = options.vocabSize <= 0x10000 ? 'uint16' : 'int32';
    this.pool = this.tokenType === 'uint16' ? new Uint16Array(1 << 16) : new Int32Array(1 << 16);
  }

  /** (key, value) pairs added so far. */
  get size(): number {
    return this.count;
  }

  /** Adds a key (token ids, no [CLS]/[SEP]) with one value; a key may be added with several values. */
  add(tokens: ArrayLike<number>, value: string): void {
    if (this.built) throw new Error('TrieBuilder.build() was called already');
    const n = tokens.length;
    if (n === 0) throw new TrieError('an empty key cannot be added: the decoder would end before any token');
    const vocabSize = this.options.vocabSize;
    this.pool = grow(this.pool, this.poolUsed, this.poolUsed + n);
    const pool = this.pool;
    let at = this.poolUsed;
    for (let i = 0; i < n; i++) {
      const t = tokens[i]!;
      if (!(t >= 0 && t < vocabSize && Number.isInteger(t))) throw new TrieError(`token id ${t} is outside the vocabulary (0 to ${vocabSize - 1})`);
      pool[at++] = t;
    }
    const k = this.count++;
    this.keyStart = grow(this.keyStart, k + 1, k + 2);
    this.keyValue = grow(this.keyValue, k, k + 1);
    this.keyStart[k] = this.poolUsed;
    this.keyStart[k + 1] = at;
    this.keyValue[k] = this.strings.intern(value);
    this.poolUsed = at;
  }

  /**
   * The trie of the keys added; refuses when there are none. Level by level, in linear
   * time: the keys still active at depth d (longer than d) are grouped by (node, token at
   * d) with two stable counting sorts, each group becomes a child (breadth-first ids, tokens
   * ascending), and the keys that end there set its key-end bit and values.
   */
  build(): Trie {
    if (this.built) throw new Error('TrieBuilder.build() was called already');
    const K = this.count;
    if (K === 0) throw new TrieError('no keys to build a trie from');
    this.built = true;
    const pool = this.pool;
    const start = this.keyStart;
    const value = this.keyValue;
    const bound = this.poolUsed + 1; // at most one node a token, plus the root
    let tokens: TokenArray = this.tokenType === 'uint16' ? new Uint16Array(bound) : new Int32Array(bound);
    let firstChild = new Uint32Array(bound + 1);
    let bits = new Uint32Array((bound + 31) >>> 5);
    let valueIds = new Uint32Array(K);
    let valueStart = new Uint32Array(K + 1);
    // the keys still active, in node order: each one's value, the pool index of its token at
    // `depth` and its end, its node and that token (carried: the pool is read once a level);
    // `spare` receives the sorts' output
    const K4 = () => new Uint32Array(K);
    let [val, pos, end, nd, tok] = [K4(), K4(), K4(), K4(), K4()];
    let [sVal, sPos, sEnd, sNd, sTok] = [K4(), K4(), K4(), K4(), K4()];
    for (let k = 0; k < K; k++) {
      val[k] = value[k]!;
      pos[k] = start[k]!;
      end[k] = start[k + 1]!;
    }
    const tokenCount = new Uint32Array(this.options.vocabSize + 1);
    let nodeCount = new Uint32Array(K + 2);
    let active = K;
    let levelStart = 0; // the nodes of the current level: levelStart .. nodes - 1
    let nodes = 1;
    let ends = 0;
    let pairs = 0;
    let depth = 0;
    for (; active > 0; depth++) {
      const levelEnd = nodes;
      // stable by the token at `depth`
      tokenCount.fill(0);
      for (let i = 0; i < active; i++) {
        const t = pool[pos[i]!]!;
        tok[i] = t;
        tokenCount[t + 1]!++;
      }
      for (let t = 1; t < tokenCount.length; t++) tokenCount[t]! += tokenCount[t - 1]!;
      for (let i = 0; i < active; i++) {
        const p = tokenCount[tok[i]!]!++;
        sVal[p] = val[i]!;
        sPos[p] = pos[i]!;
        sEnd[p] = end[i]!;
        sNd[p] = nd[i]!;
        sTok[p] = tok[i]!;
      }
      // stable by node: grouped by node, then token, then the order the keys were added
      const levelSize = levelEnd - levelStart;
      nodeCount.fill(0, 0, levelSize + 1);
      for (let i = 0; i < active; i++) nodeCount[sNd[i]! - levelStart + 1]!++;
      for (let n = 1; n <= levelSize; n++) nodeCount[n]! += nodeCount[n - 1]!;
      for (let i = 0; i < active; i++) {
        const p = nodeCount[sNd[i]! - levelStart]!++;
        val[p] = sVal[i]!;
        pos[p] = sPos[i]!;
        end[p] = sEnd[i]!;
        nd[p] = sNd[i]!;
        tok[p] = sTok[i]!;
      }
      // each (node, token) run is a child; the next level's active keys go to `s*`
      let m = 0;
      let parent = levelStart; // the next node of this level whose firstChild is unset
      for (let i = 0; i < active; ) {
        const node = nd[i]!;
        const t = tok[i]!;
        while (parent <= node) firstChild[parent++] = nodes;
        const child = nodes++;
        tokens[child] = t;
        const firstPair = pairs;
        let j = i;
        for (; j < active && nd[j] === node && tok[j] === t; j++) {
          if (pos[j]! + 1 === end[j]) {
            valueIds[pairs++] = val[j]!;
          } else {
            sVal[m] = val[j]!;
            sPos[m] = pos[j]! + 1;
            sEnd[m] = end[j]!;
            sNd[m] = child;
            m++;
          }
        }
        if (pairs > firstPair) {
          bits[child >>> 5]! |= 1 << (child & 31);
          valueStart[ends++] = firstPair;
          if (pairs - firstPair > 1) {
            // a key's values in the order their text first appeared; the same pair twice is kept once
            const group = valueIds.subarray(firstPair, pairs).sort();
            let kept = 1;
            for (let g = 1; g < group.length; g++) if (group[g] !== group[kept - 1]) group[kept++] = group[g]!;
            pairs = firstPair + kept;
          }
        }
        i = j;
      }
      while (parent < levelEnd) firstChild[parent++] = nodes;
      [val, sVal] = [sVal, val];
      [pos, sPos] = [sPos, pos];
      [end, sEnd] = [sEnd, end];
      [nd, sNd] = [sNd, nd];
      active = m;
      levelStart = levelEnd;
    }
    // the last level's nodes are leaves
    for (let n = levelStart; n <= nodes; n++) firstChild[n] = nodes;
    valueStart[ends] = pairs;
    // free the collection before copying the exact sizes out
    this.pool = new Uint16Array(0);
    this.keyStart = this.keyValue = new Uint32Array(0);
    val = pos = end = nd = tok = sVal = sPos = sEnd = sNd = sTok = nodeCount = new Uint32Array(0);
    if (nodes < bound) {
      tokens = tokens.slice(0, nodes);
      firstChild = firstChild.slice(0, nodes + 1);
      bits = bits.slice(0, (nodes + 31) >>> 5);
    }
    if (pairs < K) valueIds = valueIds.slice(0, pairs);
    if (ends < K) valueStart = valueStart.slice(0, ends + 1);
    const rank = new Uint32Array(bits.length);
    for (let w = 0, r = 0; w < bits.length; w++) {
      rank[w] = r;
      r += popcount(bits[w]!);
    }
    const strings = this.strings;
    const info: TrieInfo = {
      vocabSize: this.options.vocabSize,
      vocabHash: this.options.vocabHash,
      lowerCase: this.options.lowerCase ?? null,
      tokenType: this.tokenType,
      keys: ends,
      pairs,
      strings: strings.count,
      nodes,
      maxDepth: depth,
    };
    return new Trie(info, tokens, firstChild, bits, rank, valueStart, valueIds, strings.offsets.slice(0, strings.count + 1), strings.blob.slice(0, strings.bytes));
  }
}

// ---------------------------------------------------------------------------------------
// from a TSV of key<TAB>value lines

export interface TsvBuildProgress {
  lines: number;
  pairs: number;
  bytesRead: number;
  bytesTotal: number;
}

export interface TsvBuildOptions {
  /** The TSV: `key<TAB>value` per line; the value is the rest of the line (tabs included). */
  keys: string;
  vocab: Vocab;
  /** Lower-case and strip accents as the model's tokenizer does (default true). */
  lowerCase?: boolean;
  /** Refuse a key with [UNK] tokens instead of keeping it with a warning. */
  strict?: boolean;
  /** Called every 65,536 lines while reading. */
  onProgress?: (p: TsvBuildProgress) => void;
}

export interface TsvBuildReport {
  trie: Trie;
  /** Lines read, blank ones included. */
  lines: number;
  /** (key, value) lines added. */
  pairs: number;
  blankLines: number;
  /** Keys with no token at all (only spaces or control characters): skipped. */
  emptyKeys: { count: number; firstLine: number };
  /** Keys kept although they hold [UNK] (characters the vocabulary lacks). */
  unknownKeys: { count: number; tokens: number; firstLine: number; example: string };
  readSeconds: number;
  buildSeconds: number;
}

/** The key's characters that became [UNK], quoted, for a message. */
function unknownText(key: string, ids: number[], offsets: ([number, number] | null)[], unk: number): string {
  const parts = ids.flatMap((id, i) => (id === unk && offsets[i] ? [JSON.stringify(key.slice(offsets[i]![0], offsets[i]![1]))] : []));
  return parts.slice(0, 5).join(', ') + (parts.length > 5 ? ', ...' : '');
}

/**
 * Builds a trie from `key<TAB>value` lines, streamed: keys tokenized with the vocabulary's
 * BERT tokenizer (no [CLS]/[SEP]: the decoder emits [SEP] at the end). Blank lines are
 * skipped; a line without a TAB is refused (file:line); a key with no tokens is skipped and
 * counted; a key with [UNK] is kept and counted (refused with `strict`).
 */
export async function buildTrieFromTsv(options: TsvBuildOptions): Promise<TsvBuildReport> {
  const file = options.keys;
  const stat = await fs.stat(file).catch((err: NodeJS.ErrnoException) => {
    throw new TrieError(err.code === 'ENOENT' ? `keys file ${file} does not exist` : `cannot read keys file ${file}: ${err.message}`);
  });
  if (!stat.isFile()) throw new TrieError(`keys path ${file} is not a file`);
  const vocab = options.vocab;
  const lowerCase = options.lowerCase ?? true;
  const tokenizer = new BertTokenizer(vocab, { lowerCase });
  const builder = new TrieBuilder({ vocabSize: vocab.size, vocabHash: vocab.hash, lowerCase });
  const unk = vocab.unk;
  const started = performance.now();
  const stream = createReadStream(file, { highWaterMark: 1 << 20 });
  let lines = 0;
  let blankLines = 0;
  const emptyKeys = { count: 0, firstLine: 0 };
  const unknownKeys = { count: 0, tokens: 0, firstLine: 0, example: '' };
  for await (const line of decodeLines(stream, `keys file ${file}`)) {
    lines++;
    if ((lines & 0xffff) === 0) options.onProgress?.({ lines, pairs: builder.size, bytesRead: stream.bytesRead, bytesTotal: stat.size });
    const tab = line.indexOf('\t');
    if (tab < 0) {
      if (line.trim() === '') {
        blankLines++;
        continue;
      }
      throw new TrieError(`${file}:${lines}: no TAB in ${JSON.stringify(line.length > 60 ? `${line.slice(0, 60)}...` : line)}; each line is key<TAB>value`);
    }
    const key = line.slice(0, tab);
    const { ids, offsets } = tokenizer.tokenize(key);
    if (ids.length === 0) {
      if (emptyKeys.count++ === 0) emptyKeys.firstLine = lines;
      continue;
    }
    let unknown = 0;
    for (const id of ids) if (id === unk) unknown++;
    if (unknown > 0) {
      if (options.strict) {
        throw new TrieError(`${file}:${lines}: the key ${JSON.stringify(key)} has ${unknown} [UNK] token(s) (${unknownText(key, ids, offsets, unk)} not in ${vocab.source}); without --strict such keys are kept with a warning`);
      }
      if (unknownKeys.count++ === 0) {
        unknownKeys.firstLine = lines;
        unknownKeys.example = `${JSON.stringify(key)} (${unknownText(key, ids, offsets, unk)})`;
      }
      unknownKeys.tokens += unknown;
    }
    builder.add(ids, line.slice(tab + 1));
  }
  const pairs = builder.size;
  if (pairs === 0) {
    const why = lines === blankLines ? 'it is empty' : `its ${lines} line(s) have ${emptyKeys.count > 0 ? 'only keys without tokens' : 'no key'}`;
    throw new TrieError(`${file} has no keys to build a trie from: ${why}; each line is key<TAB>value`);
  }
  const read = performance.now();
  const trie = builder.build();
  return { trie, lines, pairs, blankLines, emptyKeys, unknownKeys, readSeconds: (read - started) / 1000, buildSeconds: (performance.now() - read) / 1000 };
}

/** The warnings of a build, one line each (empty when there are none). */
export function buildWarnings(report: TsvBuildReport, file: string): string[] {
  const out: string[] = [];
  const u = report.unknownKeys;
  if (u.count > 0) {
    out.push(
      `${u.count} of ${report.pairs} key line(s) have [UNK] tokens (${u.tokens} in all), first ${file}:${u.firstLine}: ${u.example}; ` +
        'they are kept, but the decoder reaches them only by emitting [UNK] and keys differing only there share one path (--strict refuses them)',
    );
  }
  const e = report.emptyKeys;
  if (e.count > 0) out.push(`${e.count} key(s) have no tokens (only spaces or control characters) and were skipped, first ${file}:${e.firstLine}`);
  return out;
}

// ---------------------------------------------------------------------------------------
// the file

const DTYPE_OF = { uint8: Uint8Array, uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array } as const;
type DType = keyof typeof DTYPE_OF;

function dtypeOf(a: TokenArray | Uint32Array | Uint8Array): DType {
  if (a instanceof Uint8Array) return 'uint8';
  if (a instanceof Uint16Array) return 'uint16';
  if (a instanceof Int32Array) return 'int32';
  return 'uint32';
}

const align8 = (n: number): number => (n + 7) & ~7;

function requireLittleEndian(): void {
  if (endianness() !== 'LE') throw new TrieError('trie files are little-endian and this machine is big-endian: not supported');
}

/** Writes the trie to `file` atomically (a temporary beside it, renamed); returns the file's bytes. */
export async function writeTrie(file: string, trie: Trie): Promise<number> {
  requireLittleEndian();
  const arrays = trie.arrays();
  const sections: SectionEntry[] = [];
  let dataBytes = 0;
  for (const [name, a] of arrays) {
    sections.push({ name, dtype: dtypeOf(a), offset: dataBytes, length: a.length });
    dataBytes = align8(dataBytes + a.byteLength);
  }
  const header: TrieHeader = { format: 'tfjs-pretrain-trie', ...trie.info, dataBytes, sections };
  let json = Buffer.from(JSON.stringify(header));
  const headerBytes = align8(PREFIX_BYTES + json.length) - PREFIX_BYTES;
  json = Buffer.concat([json, Buffer.alloc(headerBytes - json.length, 0x20)]);
  const prefix = Buffer.alloc(PREFIX_BYTES);
  prefix.write(TRIE_MAGIC, 0, 'latin1');
  prefix.writeUInt32LE(TRIE_VERSION, 8);
  prefix.writeUInt32LE(headerBytes, 12);
  const zeros = Buffer.alloc(8);
  await writeFileAtomically(file, async (handle) => {
    let crc = 0;
    const put = async (bytes: Uint8Array): Promise<void> => {
      if (bytes.length === 0) return;
      crc = crc32c(bytes, crc);
      for (let at = 0; at < bytes.length; ) at += (await handle.write(bytes, at, bytes.length - at)).bytesWritten;
    };
    await put(prefix);
    await put(json);
    for (const [, a] of arrays) {
      await put(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
      await put(zeros.subarray(0, align8(a.byteLength) - a.byteLength));
    }
    const tail = Buffer.alloc(CRC_BYTES);
    tail.writeUInt32LE(crc >>> 0, 0);
    await put(tail);
  });
  return PREFIX_BYTES + headerBytes + dataBytes + CRC_BYTES;
}

/** The header's JSON, or undefined when it is not one of ours. */
function parseHeader(bytes: Uint8Array, headerBytes: number): TrieHeader | undefined {
  try {
    const h = JSON.parse(utf8.decode(bytes.subarray(PREFIX_BYTES, PREFIX_BYTES + headerBytes))) as TrieHeader;
    return h && typeof h === 'object' && h.format === 'tfjs-pretrain-trie' && Array.isArray(h.sections) && Number.isSafeInteger(h.dataBytes) ? h : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A trie from a file's bytes: magic, version, length and checksum verified, then views
 * onto `bytes` (no copy unless they are not 8-byte aligned). `name` is what messages call
 * the file; with `vocab`, a trie built with another vocabulary is refused.
 */
export function parseTrie(bytes: Uint8Array, name: string, vocab?: VocabIdentity): Trie {
  requireLittleEndian();
  const corrupt = (why: string) => new TrieError(`${name} ${why}`, true);
  if (bytes.length < PREFIX_BYTES + CRC_BYTES) throw corrupt(`is not a trie file: ${bytes.length} bytes is too short (truncated?)`);
  if (Buffer.from(bytes.buffer, bytes.byteOffset, 8).toString('latin1') !== TRIE_MAGIC) throw corrupt(`is not a trie file (it does not start with ${TRIE_MAGIC}); build one with pretrain trie build`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(8, true);
  if (version !== TRIE_VERSION) throw corrupt(`is trie format version ${version}; this version of tfjs-pretrain reads version ${TRIE_VERSION}: rebuild it with pretrain trie build`);
  const headerBytes = view.getUint32(12, true);
  if (PREFIX_BYTES + headerBytes + CRC_BYTES > bytes.length) throw corrupt(`is truncated: ${bytes.length} bytes, less than its header alone (${PREFIX_BYTES + headerBytes + CRC_BYTES})`);
  const header = parseHeader(bytes, headerBytes);
  const expectedBytes = header ? PREFIX_BYTES + headerBytes + header.dataBytes + CRC_BYTES : undefined;
  if (expectedBytes !== undefined && expectedBytes !== bytes.length) {
    throw corrupt(expectedBytes > bytes.length ? `is truncated: ${bytes.length} of its ${expectedBytes} bytes` : `has ${bytes.length - expectedBytes} bytes more than its header says (${expectedBytes})`);
  }
  const stored = view.getUint32(bytes.length - CRC_BYTES, true);
  const actual = crc32c(bytes.subarray(0, bytes.length - CRC_BYTES)) >>> 0;
  if (stored !== actual) throw corrupt(`is corrupt: checksum mismatch (CRC32C ${actual.toString(16).padStart(8, '0')}, stored ${stored.toString(16).padStart(8, '0')}); rebuild it with pretrain trie build`);
  if (!header) throw corrupt('has an unreadable header');
  if (vocab) checkVocab(header, vocab, name);
  // views need their element alignment: copy the rare buffer that does not start 8-aligned
  const data = bytes.byteOffset % 8 === 0 ? bytes : new Uint8Array(bytes);
  const base = data.byteOffset + PREFIX_BYTES + headerBytes;
  const found = new Map<string, TokenArray | Uint32Array | Uint8Array>();
  for (const s of header.sections) {
    const type = DTYPE_OF[s.dtype];
    if (!type || !SECTION_NAMES.includes(s.name) || !Number.isSafeInteger(s.offset) || !Number.isSafeInteger(s.length) || s.offset % 8 !== 0 || s.offset + s.length * type.BYTES_PER_ELEMENT > header.dataBytes) {
      throw corrupt(`has a bad section table entry ${JSON.stringify(s)}`);
    }
    found.set(s.name, new type(data.buffer as ArrayBuffer, base + s.offset, s.length));
  }
  const get = <T extends TokenArray | Uint32Array | Uint8Array>(n: SectionName, ...types: (new (...args: never[]) => T)[]): T => {
    const a = found.get(n);
    if (!a || !types.some((t) => a instanceof t)) throw corrupt(`lacks its ${n} section or has it with the wrong type`);
    return a as T;
  };
  const info: TrieInfo = {
    vocabSize: header.vocabSize,
    vocabHash: header.vocabHash,
    lowerCase: header.lowerCase,
    tokenType: header.tokenType,
    keys: header.keys,
    pairs: header.pairs,
    strings: header.strings,
    nodes: header.nodes,
    maxDepth: header.maxDepth,
  };
  const trie = new Trie(
    info,
    get<TokenArray>('tokens', Uint16Array, Int32Array),
    get('firstChild', Uint32Array),
    get('keyEndBits', Uint32Array),
    get('keyEndRank', Uint32Array),
    get('valueStart', Uint32Array),
    get('valueIds', Uint32Array),
    get('stringOffsets', Uint32Array),
    get('strings', Uint8Array),
  );
  // the shapes the accessors rely on (the checksum vouches for the contents)
  const n = info.nodes;
  const ok =
    trie.tokens.length === n &&
    trie.firstChild.length === n + 1 &&
    trie.firstChild[n] === n &&
    trie.keyEndBits.length === (n + 31) >>> 5 &&
    trie.keyEndRank.length === trie.keyEndBits.length &&
    trie.valueStart.length === info.keys + 1 &&
    trie.valueIds.length === info.pairs &&
    trie.stringOffsets.length === info.strings + 1 &&
    trie.stringOffsets[info.strings] === trie.strings.length;
  if (!ok) throw corrupt('has sections whose sizes disagree with its header');
  return trie;
}

function checkVocab(header: TrieInfo, vocab: VocabIdentity, name: string): void {
  if (header.vocabSize === vocab.size && header.vocabHash === vocab.hash) return;
  const short = (h: string) => h.slice(0, 12);
  throw new TrieError(
    `${name} was built with another vocabulary (${header.vocabSize} tokens, sha256 ${short(header.vocabHash)}...) than ${vocab.source ?? 'the one given'} ` +
      `(${vocab.size} tokens, sha256 ${short(vocab.hash)}...): its token ids would mean other tokens; rebuild it with pretrain trie build --vocab <the model's vocab.txt>`,
  );
}

/**
 * Loads a trie file: one read, the checksum, views onto the bytes. With `vocab`, refuses a
 * trie built with another vocabulary (size and SHA-256 of its text differ).
 */
export async function loadTrie(file: string, vocab?: VocabIdentity): Promise<Trie> {
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new TrieError(code === 'ENOENT' ? `trie file ${file} does not exist` : code === 'EISDIR' ? `trie path ${file} is a folder, not a file` : `cannot read trie file ${file}: ${(err as Error).message}`);
  }
  return parseTrie(bytes, `trie file ${file}`, vocab);
}
