/**
 * A STAND-IN data pipeline: a built-in corpus, a character-level vocabulary and an
 * in-memory batch maker, so that `coordinator start --local` trains on something
 * without any download. It is replaced by the real tokenizer / instance builder /
 * TFRecord pipeline (issue 3); nothing else should grow on top of it.
 *
 * The corpus (`builtin-corpus.txt`, next to this file in src/ and copied beside the
 * compiled file in dist/ by `npm run build`) is 54 classical Chinese poems of the
 * Tang dynasty (618-907), one poem per line. The poems are over a thousand years old
 * and in the public domain; the text was typed from common memory in simplified
 * characters, not copied from a modern (copyrightable) edition.
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Application } from '../model/build.js';
import { type Batch, nextTokenTargets } from '../batch.js';

export const PAD = 0;
export const UNK = 1;
export const CLS = 2;
export const SEP = 3;
export const MASK = 4;
export const SPECIAL_TOKENS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] as const;

/** Where the corpus lives: beside this module (dist after the copy step, or src), else in src from dist. */
const CORPUS_CANDIDATES = [
  new URL('./builtin-corpus.txt', import.meta.url),
  new URL('../../../src/data/builtin-corpus.txt', import.meta.url),
];

/** A character-level vocabulary: the special tokens, then every distinct character of the texts by code point. */
export class CharVocab {
  readonly tokens: readonly string[];
  private readonly ids: Map<string, number>;

  constructor(texts: readonly string[]) {
    const chars = new Set<string>();
    for (const text of texts) for (const ch of text) chars.add(ch);
    const sorted = [...chars].sort((a, b) => a.codePointAt(0)! - b.codePointAt(0)!);
    this.tokens = [...SPECIAL_TOKENS, ...sorted];
    this.ids = new Map(this.tokens.map((t, i) => [t, i]));
  }

  get size(): number {
    return this.tokens.length;
  }

  /** One id per character (code point); unknown characters are [UNK]. */
  encode(text: string): number[] {
    return Array.from(text, (ch) => this.ids.get(ch) ?? UNK);
  }

  decode(ids: ArrayLike<number>): string {
    let out = '';
    for (let i = 0; i < ids.length; i++) out += this.tokens[ids[i]!] ?? SPECIAL_TOKENS[UNK];
    return out;
  }
}

export interface Corpus {
  /** One text (a poem) per entry. */
  readonly lines: readonly string[];
  readonly vocab: CharVocab;
}

export function corpusFromText(text: string): Corpus {
  const lines = text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0 && !l.startsWith('#'));
  return { lines, vocab: new CharVocab(lines) };
}

let cached: Corpus | undefined;

export function loadBuiltinCorpus(): Corpus {
  if (cached) return cached;
  const file = CORPUS_CANDIDATES.find((url) => existsSync(url));
  if (!file) throw new Error(`built-in corpus not found (looked for ${CORPUS_CANDIDATES.map((u) => fileURLToPath(u)).join(', ')}); run npm run build`);
  cached = corpusFromText(readFileSync(file, 'utf8'));
  return cached;
}

/**
 * Splits the corpus into training and held-out texts: every `every`-th text (from the
 * second) is held out, so both halves span the whole corpus.
 */
export function splitCorpus(corpus: Corpus, every = 9): { train: string[]; heldOut: string[] } {
  const train: string[] = [];
  const heldOut: string[] = [];
  corpus.lines.forEach((line, i) => (i % every === 1 ? heldOut : train).push(line));
  return { train, heldOut };
}

/** mulberry32: a small seeded PRNG in [0, 1) (never Math.random, so batches repeat with the seed). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffled<T>(items: readonly T[], rand: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** Splits a poem near its middle at a clause end (，。！？；), for the UniLM source/target pair. */
export function splitHalves(text: string): [string, string] {
  const chars = Array.from(text);
  let best = Math.floor(chars.length / 2);
  let bestDistance = Infinity;
  chars.forEach((ch, i) => {
    if (!'，。！？；,.!?;'.includes(ch) || i + 1 >= chars.length) return;
    const distance = Math.abs(i + 1 - chars.length / 2);
    if (distance < bestDistance) {
      best = i + 1;
      bestDistance = distance;
    }
  });
  return [chars.slice(0, best).join(''), chars.slice(best).join('')];
}

export interface BatchOptions {
  application: Application;
  batchSize: number;
  /** Sequence length: rows are [CLS] ... [SEP], truncated or padded to it. */
  length: number;
  seed: number;
  /** Fraction of the non-special positions that become MLM targets (encoder only). Default 0.15. */
  maskRate?: number;
}

/**
 * One batch from the given texts (one row per text). Encoder: [CLS] text [SEP] with
 * `maskRate` of the text positions as targets (80% -> [MASK], 10% a random id, 10% kept).
 * unilm: [CLS] first half [SEP] second half [SEP], segments 0 then 1, next-token targets on
 * the second half. lm: [CLS] text [SEP], next-token targets everywhere.
 */
export function makeBatch(vocab: CharVocab, texts: readonly string[], options: Omit<BatchOptions, 'batchSize'>, rand: () => number): Batch {
  const { application, length } = options;
  if (length < 4) throw new Error(`sequence length ${length} is too short; use at least 4`);
  const batchSize = texts.length;
  const tokenIds = new Int32Array(batchSize * length);
  const segmentIds = new Int32Array(batchSize * length);
  let targets: Int32Array = new Int32Array(batchSize * length);
  texts.forEach((text, b) => {
    const row = b * length;
    let ids: number[];
    let segments: number[];
    if (application === 'unilm') {
      let [source, target] = splitHalves(text).map((half) => vocab.encode(half)) as [number[], number[]];
      // like BERT's truncate_seq_pair: trim the longer side until both fit
      while (source.length + target.length > length - 3) {
        if (source.length > target.length) source = source.slice(0, -1);
        else target = target.slice(0, -1);
      }
      ids = [CLS, ...source, SEP, ...target, SEP];
      segments = [...new Array<number>(source.length + 2).fill(0), ...new Array<number>(target.length + 1).fill(1)];
    } else {
      ids = [CLS, ...vocab.encode(text).slice(0, length - 2), SEP];
      segments = new Array<number>(ids.length).fill(0);
    }
    tokenIds.set(ids, row);
    segmentIds.set(segments, row);
    if (application !== 'encoder') return;
    // MLM: choose round(rate * n) (at least one) of the text positions, as Google's BERT does
    const candidates = ids.map((_, i) => i).filter((i) => ids[i] !== CLS && ids[i] !== SEP);
    const count = Math.max(1, Math.round((options.maskRate ?? 0.15) * candidates.length));
    for (const i of shuffled(candidates, rand).slice(0, count)) {
      const k = row + i;
      targets[k] = tokenIds[k]!;
      const r = rand();
      if (r < 0.8) tokenIds[k] = MASK;
      else if (r < 0.9) tokenIds[k] = SPECIAL_TOKENS.length + Math.floor(rand() * (vocab.size - SPECIAL_TOKENS.length));
    }
  });
  if (application !== 'encoder') targets = nextTokenTargets(application, batchSize, length, tokenIds, segmentIds);
  return { batchSize, length, tokenIds, segmentIds, targets };
}

/**
 * An endless stream of batches over `texts`: a seeded permutation per epoch, consecutive
 * texts per batch (wrapping into the next epoch), masks drawn from the same seeded stream.
 * Everything is a function of the seed.
 */
export function* pretrainingBatches(vocab: CharVocab, texts: readonly string[], options: BatchOptions): Generator<Batch, never> {
  if (texts.length === 0) throw new Error('no texts to make batches from');
  const rand = seededRandom(options.seed);
  let order = shuffled(texts, rand);
  let next = 0;
  for (;;) {
    const rows: string[] = [];
    while (rows.length < options.batchSize) {
      if (next === order.length) {
        order = shuffled(texts, rand);
        next = 0;
      }
      rows.push(order[next++]!);
    }
    yield makeBatch(vocab, rows, options, rand);
  }
}

/** MLM batches over the built-in corpus's training texts. */
export function mlmBatches(seed: number, batchSize = 8, length = 64): Generator<Batch, never> {
  const corpus = loadBuiltinCorpus();
  return pretrainingBatches(corpus.vocab, splitCorpus(corpus).train, { application: 'encoder', batchSize, length, seed });
}
