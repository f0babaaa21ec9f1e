import { basicTokens, isSingleCharToken } from './tokenizer.js';

/** The tokens every built vocabulary starts with, in BERT's order. */
export const SPECIAL_TOKENS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] as const;

export interface VocabBuildOptions {
  /** Tokens wanted in all (specials included). */
  size: number;
  lowerCase?: boolean;
}

export interface BuiltVocab {
  tokens: string[];
  /** Counts behind it: single characters (CJK, punctuation) and other words seen. */
  singleChars: number;
  words: number;
  /** WordPiece units learned for the other words (merges). */
  merges: number;
}

export class VocabSizeError extends Error {
  override name = 'VocabSizeError';
}

/** A max-heap of [count, key] with lazy deletion: stale entries are skipped when popped. */
class PairHeap {
  private readonly items: [number, string][] = [];

  private better(a: [number, string], b: [number, string]): boolean {
    return a[0] > b[0] || (a[0] === b[0] && a[1] < b[1]);
  }

  push(item: [number, string]): void {
    const h = this.items;
    h.push(item);
    for (let i = h.length - 1; i > 0; ) {
      const parent = (i - 1) >> 1;
      if (!this.better(h[i]!, h[parent]!)) break;
      [h[i], h[parent]] = [h[parent]!, h[i]!];
      i = parent;
    }
  }

  pop(): [number, string] | undefined {
    const h = this.items;
    if (h.length === 0) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < h.length && this.better(h[l]!, h[best]!)) best = l;
        if (r < h.length && this.better(h[r]!, h[best]!)) best = r;
        if (best === i) break;
        [h[i], h[best]] = [h[best]!, h[i]!];
        i = best;
      }
    }
    return top;
  }
}

const SEP = '\u0001';

/**
 * Builds a BERT vocabulary from text: the special tokens, every CJK character and
 * punctuation mark seen (most frequent first), then WordPiece units for everything
 * else: all characters (word-initial and `##` continuation), then the most frequent
 * adjacent pairs merged until the size is reached (BPE-style training; ties broken by
 * the pair's text, so the result is deterministic).
 */
export class VocabBuilder {
  private readonly singles = new Map<string, number>();
  private readonly words = new Map<string, number>();
  readonly lowerCase: boolean;

  constructor(options: { lowerCase?: boolean } = {}) {
    this.lowerCase = options.lowerCase ?? true;
  }

  add(text: string): void {
    for (const t of basicTokens(text, this.lowerCase)) {
      const map = isSingleCharToken(t) ? this.singles : this.words;
      map.set(t, (map.get(t) ?? 0) + 1);
    }
  }

  /** True until a token was added: such a vocabulary would hold the special tokens only. */
  get empty(): boolean {
    return this.singles.size === 0 && this.words.size === 0;
  }

  build(size: number): BuiltVocab {
    const byCount = (a: [string, number], b: [string, number]) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
    const tokens: string[] = [...SPECIAL_TOKENS];
    const have = new Set<string>(tokens);
    const take = (t: string) => {
      if (!have.has(t)) {
        have.add(t);
        tokens.push(t);
      }
    };
    for (const [t] of [...this.singles].sort(byCount)) take(t);
    // the alphabet: every character as a word start and as a continuation
    const words = [...this.words].sort(byCount).map(([w, count]) => ({ symbols: [...w].map((c, i) => (i === 0 ? c : `##${c}`)), count }));
    const alphabet = new Map<string, number>();
    for (const w of words) for (const s of w.symbols) alphabet.set(s, (alphabet.get(s) ?? 0) + w.count);
    for (const [t] of [...alphabet].sort(byCount)) take(t);
    if (tokens.length > size) {
      throw new VocabSizeError(
        `a vocabulary of ${size} tokens cannot hold what the corpus needs: ${SPECIAL_TOKENS.length} special tokens, ${this.singles.size} CJK characters and punctuation marks, ${alphabet.size} word characters; use --size ${tokens.length} or more`,
      );
    }
    const merges = this.merge(words, size, take, () => tokens.length);
    return { tokens, singleChars: this.singles.size, words: this.words.size, merges };
  }

  private merge(words: { symbols: string[]; count: number }[], size: number, take: (t: string) => void, count: () => number): number {
    const pairCounts = new Map<string, number>();
    const pairWords = new Map<string, Set<number>>();
    const heap = new PairHeap();
    const addPairs = (wi: number, sign: 1 | -1, touched: Set<string>) => {
      const { symbols, count: c } = words[wi]!;
      for (let i = 0; i + 1 < symbols.length; i++) {
        const key = symbols[i] + SEP + symbols[i + 1];
        pairCounts.set(key, (pairCounts.get(key) ?? 0) + sign * c);
        if (sign > 0) {
          let set = pairWords.get(key);
          if (!set) pairWords.set(key, (set = new Set()));
          set.add(wi);
        }
        touched.add(key);
      }
    };
    const initial = new Set<string>();
    words.forEach((_, wi) => addPairs(wi, 1, initial));
    for (const key of initial) heap.push([pairCounts.get(key)!, key]);
    let merges = 0;
    while (count() < size) {
      const top = heap.pop();
      if (!top) break;
      const [c, key] = top;
      if (pairCounts.get(key) !== c || c <= 0) continue; // stale
      const [a, b] = key.split(SEP) as [string, string];
      const merged = a + b.slice(2);
      take(merged);
      merges++;
      const touched = new Set<string>();
      for (const wi of pairWords.get(key) ?? []) {
        const w = words[wi]!;
        let found = false;
        for (let i = 0; i + 1 < w.symbols.length; i++) if (w.symbols[i] === a && w.symbols[i + 1] === b) found = true;
        if (!found) continue;
        addPairs(wi, -1, touched);
        const next: string[] = [];
        for (let i = 0; i < w.symbols.length; i++) {
          if (i + 1 < w.symbols.length && w.symbols[i] === a && w.symbols[i + 1] === b) {
            next.push(merged);
            i++;
          } else {
            next.push(w.symbols[i]!);
          }
        }
        w.symbols = next;
        addPairs(wi, 1, touched);
      }
      for (const k of touched) {
        const n = pairCounts.get(k)!;
        if (n > 0) heap.push([n, k]);
      }
    }
    return merges;
  }
}
