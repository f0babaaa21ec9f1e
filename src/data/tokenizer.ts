import type { Vocab } from './vocab.js';

/**
 * BERT's tokenizer: basic tokenization (control characters dropped, whitespace split,
 * every CJK character and punctuation mark its own token, optional lower-casing with
 * accent stripping), then greedy longest-match WordPiece with `##` continuations.
 * Every token keeps the span of the original text it came from, in UTF-16 code units
 * (what `String.prototype.slice` takes).
 */

const enum CharClass {
  Other = 0,
  Space = 1,
  Drop = 2,
  Punct = 3,
  Cjk = 4,
}

/** The CJK Unified Ideograph blocks BERT splits (not Hangul, Hiragana or Katakana). */
function isCjk(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) ||
    (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) ||
    (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}

// Zs is BERT's whitespace; Zl and Zp (U+2028, U+2029) split too, as Python's str.split does
const SPACE_RE = /^[\p{Zs}\p{Zl}\p{Zp}]$/u;
const CONTROL_RE = /^\p{C}$/u;
const PUNCT_RE = /^\p{P}$/u;

function classify(cp: number): CharClass {
  if (cp === 32 || cp === 9 || cp === 10 || cp === 13) return CharClass.Space;
  if (cp === 0 || cp === 0xfffd) return CharClass.Drop;
  const ch = String.fromCodePoint(cp);
  if (SPACE_RE.test(ch)) return CharClass.Space;
  if (CONTROL_RE.test(ch)) return CharClass.Drop;
  if (isCjk(cp)) return CharClass.Cjk;
  // BERT counts all non-alphanumeric ASCII as punctuation ($, +, ^, ` ...), plus Unicode P*
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126)) return CharClass.Punct;
  return PUNCT_RE.test(ch) ? CharClass.Punct : CharClass.Other;
}

let bmpClasses: Uint8Array | undefined;
const astralClasses = new Map<number, CharClass>();

function classOf(cp: number): CharClass {
  if (cp < 0x10000) {
    if (!bmpClasses) {
      bmpClasses = new Uint8Array(0x10000);
      for (let c = 0; c < 0x10000; c++) bmpClasses[c] = c >= 0xd800 && c <= 0xdfff ? CharClass.Drop : classify(c);
    }
    return bmpClasses[cp] as CharClass;
  }
  let c = astralClasses.get(cp);
  if (c === undefined) astralClasses.set(cp, (c = classify(cp)));
  return c;
}

const MARK_RE = /\p{Mn}/gu;
const foldCache = new Map<number, string>();

/** Lower-case, then NFD with the combining marks removed (BERT's accent stripping). */
function fold(cp: number): string {
  if (cp < 128) return cp >= 65 && cp <= 90 ? String.fromCharCode(cp + 32) : String.fromCharCode(cp);
  let f = foldCache.get(cp);
  if (f === undefined) foldCache.set(cp, (f = String.fromCodePoint(cp).toLowerCase().normalize('NFD').replace(MARK_RE, '')));
  return f;
}

/**
 * BERT's basic tokenization alone: the words and single-character tokens (CJK,
 * punctuation) WordPiece would see, without offsets. Vocabulary building counts these.
 */
export function basicTokens(text: string, lowerCase = true): string[] {
  const out: string[] = [];
  let word = '';
  for (let i = 0; i < text.length; ) {
    const cp = text.codePointAt(i)!;
    const width = cp > 0xffff ? 2 : 1;
    const cls = classOf(cp);
    const ch = lowerCase ? fold(cp) : text.slice(i, i + width);
    i += width;
    if (cls === CharClass.Drop) continue;
    if (lowerCase && cls !== CharClass.Cjk && cls !== CharClass.Space && hasPunctuation(cp, ch)) {
      for (const c of ch) {
        if (classOf(c.codePointAt(0)!) !== CharClass.Punct) {
          word += c;
          continue;
        }
        if (word) out.push(word);
        word = '';
        out.push(c);
      }
      continue;
    }
    if (cls === CharClass.Other) {
      word += ch;
      continue;
    }
    if (word) out.push(word);
    word = '';
    if (cls !== CharClass.Space && ch) out.push(ch);
  }
  if (word) out.push(word);
  return out;
}

/** Whether a basic token is a single CJK character or punctuation mark (kept whole in a vocabulary). */
export function isSingleCharToken(token: string): boolean {
  const cp = token.codePointAt(0);
  if (cp === undefined || token.length !== (cp > 0xffff ? 2 : 1)) return false;
  const cls = classOf(cp);
  return cls === CharClass.Cjk || cls === CharClass.Punct;
}

const punctAfterFold = new Map<number, boolean>();

/** Whether a character is, or folds into something containing, punctuation. */
function hasPunctuation(cp: number, folded: string): boolean {
  if (cp < 128) return classOf(cp) === CharClass.Punct;
  let p = punctAfterFold.get(cp);
  if (p === undefined) punctAfterFold.set(cp, (p = [...folded].some((c) => classOf(c.codePointAt(0)!) === CharClass.Punct)));
  return p;
}

export interface TokenizerOptions {
  /** Lower-case and strip accents (Google's Chinese and uncased English models). Default true. */
  lowerCase?: boolean;
  /** A word longer than this many characters becomes one [UNK] (Google's BERT: 200). */
  maxCharsPerWord?: number;
}

/** Token ids with their spans in the original text; `null` for special tokens. */
export interface Tokenized {
  readonly ids: number[];
  readonly offsets: ([number, number] | null)[];
}

export interface Encoded extends Tokenized {
  readonly segmentIds: number[];
}

/** A word's WordPiece split: [id, end, id, end, ...] in the word's code units. */
type Pieces = Int32Array;

const CACHE_LIMIT = 1 << 20;

export class BertTokenizer {
  readonly lowerCase: boolean;
  readonly maxCharsPerWord: number;
  private readonly pieceCache = new Map<string, Pieces>();
  /** The longest vocabulary entry, in code units: no piece can be longer. */
  private readonly longestPiece: number;

  constructor(
    readonly vocab: Vocab,
    options: TokenizerOptions = {},
  ) {
    this.lowerCase = options.lowerCase ?? true;
    this.maxCharsPerWord = options.maxCharsPerWord ?? 200;
    this.longestPiece = vocab.tokens.reduce((n, t) => Math.max(n, t.startsWith('##') ? t.length - 2 : t.length), 1);
  }

  /** Word pieces of `text`, with offsets. */
  tokenize(text: string): Tokenized {
    const ids: number[] = [];
    const offsets: ([number, number] | null)[] = [];
    const lower = this.lowerCase;
    // the current word: either an untouched slice of `text` (fast path) or folded parts
    let wordStart = -1;
    let wordEnd = -1;
    let folded: string[] | undefined;
    let unitStarts: number[] = [];
    let unitEnds: number[] = [];
    const flush = (): void => {
      if (wordStart < 0) return;
      if (folded === undefined) {
        this.emitWord(text.slice(wordStart, wordEnd), wordStart, undefined, undefined, ids, offsets);
      } else {
        const word = folded.join('');
        if (word.length > 0) this.emitWord(word, 0, unitStarts, unitEnds, ids, offsets);
        folded = undefined;
        unitStarts = [];
        unitEnds = [];
      }
      wordStart = -1;
    };
    /** Leaves the fast path: the word so far (up to `i`) becomes folded parts. */
    const startFolding = (i: number): void => {
      folded = [text.slice(wordStart, wordEnd)];
      for (let k = wordStart; k < wordEnd; k++) {
        unitStarts.push(k);
        unitEnds.push(k + 1);
      }
    };
    for (let i = 0; i < text.length; ) {
      const cp = text.codePointAt(i)!;
      const width = cp > 0xffff ? 2 : 1;
      const cls = classOf(cp);
      if (cls === CharClass.Space) {
        flush();
        i += width;
        continue;
      }
      if (cls === CharClass.Drop) {
        // dropped without splitting the word; the word can no longer be a plain slice of the text
        if (wordStart >= 0 && folded === undefined) startFolding(i);
        i += width;
        continue;
      }
      const f = lower ? fold(cp) : undefined;
      if (cls === CharClass.Cjk || (cls === CharClass.Punct && f === undefined)) {
        flush();
        ids.push(this.vocab.ids.get(text.slice(i, i + width)) ?? this.vocab.unk);
        offsets.push([i, i + width]);
        i += width;
        continue;
      }
      if (f !== undefined && hasPunctuation(cp, f)) {
        // BERT splits punctuation after folding: each folded character on its own (e.g. ≠ -> = + mark)
        for (const c of f) {
          if (classOf(c.codePointAt(0)!) === CharClass.Punct) {
            flush();
            ids.push(this.vocab.ids.get(c) ?? this.vocab.unk);
            offsets.push([i, i + width]);
          } else {
            if (wordStart < 0) {
              wordStart = i;
              folded = [];
            } else if (folded === undefined) startFolding(i);
            folded!.push(c);
            for (let k = 0; k < c.length; k++) {
              unitStarts.push(i);
              unitEnds.push(i + width);
            }
            wordEnd = i + width;
          }
        }
        i += width;
        continue;
      }
      const unchanged = f === undefined || (f.length === width && (width === 1 ? f.charCodeAt(0) === cp : f === text.slice(i, i + width)));
      if (wordStart < 0) {
        wordStart = i;
        if (!unchanged) {
          folded = [];
        }
      } else if (!unchanged && folded === undefined) {
        startFolding(i);
      }
      if (folded !== undefined) {
        const part = unchanged ? text.slice(i, i + width) : f!;
        folded.push(part);
        for (let k = 0; k < part.length; k++) {
          unitStarts.push(i);
          unitEnds.push(i + width);
        }
      }
      i += width;
      wordEnd = i;
    }
    flush();
    return { ids, offsets };
  }

  /**
   * Appends a word's pieces. `base` is the word's start in `text` when `starts`/`ends` are
   * absent (the word is an untouched slice), else per-unit original spans.
   */
  private emitWord(word: string, base: number, starts: number[] | undefined, ends: number[] | undefined, ids: number[], offsets: ([number, number] | null)[]): void {
    const spanStart = (u: number) => (starts ? starts[u]! : base + u);
    const spanEnd = (u: number) => (ends ? ends[u - 1]! : base + u);
    const pieces = this.piecesOf(word);
    if (pieces.length === 0) {
      ids.push(this.vocab.unk);
      offsets.push([spanStart(0), spanEnd(word.length)]);
      return;
    }
    let start = 0;
    for (let k = 0; k < pieces.length; k += 2) {
      const end = pieces[k + 1]!;
      ids.push(pieces[k]!);
      offsets.push([spanStart(start), spanEnd(end)]);
      start = end;
    }
  }

  /** Greedy longest-match WordPiece; an empty result means the whole word is [UNK]. */
  private piecesOf(word: string): Pieces {
    const cached = this.pieceCache.get(word);
    if (cached) return cached;
    let result: Pieces;
    const chars = word.length > this.maxCharsPerWord ? [...word].length : word.length;
    if (chars > this.maxCharsPerWord) {
      result = new Int32Array(0);
    } else {
      const out: number[] = [];
      const ids = this.vocab.ids;
      let start = 0;
      let ok = true;
      while (start < word.length) {
        let end = Math.min(word.length, start + this.longestPiece);
        let found = -1;
        while (end > start) {
          // never cut a surrogate pair
          if (end < word.length && (word.charCodeAt(end) & 0xfc00) === 0xdc00) {
            end--;
            continue;
          }
          const sub = word.slice(start, end);
          const id = ids.get(start > 0 ? `##${sub}` : sub);
          if (id !== undefined) {
            found = id;
            break;
          }
          end--;
        }
        if (found < 0) {
          ok = false;
          break;
        }
        out.push(found, end);
        start = end;
      }
      result = ok ? Int32Array.from(out) : new Int32Array(0);
    }
    if (this.pieceCache.size >= CACHE_LIMIT) this.pieceCache.clear();
    this.pieceCache.set(word, result);
    return result;
  }

  /**
   * [CLS] first [SEP] (second [SEP]), segment ids 0 then 1, truncated to `maxLength`
   * tokens by dropping the last token of the longer part (the second on a tie).
   */
  encode(first: string, second?: string, maxLength?: number): Encoded {
    const a = this.tokenize(first);
    const b = second === undefined ? undefined : this.tokenize(second);
    const aIds = a.ids.slice();
    const aOff = a.offsets.slice();
    const bIds = b?.ids.slice() ?? [];
    const bOff = b?.offsets.slice() ?? [];
    const specials = b ? 3 : 2;
    if (maxLength !== undefined) {
      if (maxLength < specials) throw new RangeError(`maxLength ${maxLength} cannot hold the ${specials} special tokens`);
      while (aIds.length + bIds.length + specials > maxLength) {
        if (aIds.length > bIds.length) {
          aIds.pop();
          aOff.pop();
        } else {
          bIds.pop();
          bOff.pop();
        }
      }
    }
    const { cls, sep } = this.vocab;
    const ids = [cls, ...aIds, sep];
    const offsets: ([number, number] | null)[] = [null, ...aOff, null];
    const segmentIds = new Array<number>(ids.length).fill(0);
    if (b) {
      ids.push(...bIds, sep);
      offsets.push(...bOff, null);
      segmentIds.push(...new Array<number>(bIds.length + 1).fill(1));
    }
    return { ids, offsets, segmentIds };
  }

  /** Tokens back to text: `##` pieces join, CJK characters and most punctuation take no spaces. */
  decode(ids: readonly number[], options: { skipSpecial?: boolean } = {}): string {
    const skip = options.skipSpecial ?? true;
    const specials = new Set([this.vocab.cls, this.vocab.sep, this.vocab.pad, this.vocab.mask]);
    let text = '';
    let prevTight = true; // no space needed before the next token
    for (const id of ids) {
      if (skip && specials.has(id)) continue;
      const token = this.vocab.tokens[id] ?? '[UNK]';
      if (token.startsWith('##') && token.length > 2) {
        text += token.slice(2);
        prevTight = false;
        continue;
      }
      const cp = token.codePointAt(0) ?? 0;
      const single = token.length === (cp > 0xffff ? 2 : 1);
      const cls = single ? classOf(cp) : CharClass.Other;
      if (cls === CharClass.Cjk) {
        text += token;
        prevTight = true;
      } else if (cls === CharClass.Punct) {
        // opening brackets and CJK punctuation bind to what follows; other punctuation to what precedes
        text += token;
        prevTight = OPENING.has(token) || cp > 0x2fff;
      } else {
        text += prevTight ? token : ` ${token}`;
        prevTight = false;
      }
    }
    return text.replace(/ (['’])(s|t|re|ve|m|ll|d)\b/g, '$1$2').replace(/(\d\.) (\d)/g, '$1$2').trim();
  }
}

const OPENING = new Set(['(', '[', '{', '<', '"', "'", '¿', '¡', '/', '-', '+', '=', '@', '#', '$']);
