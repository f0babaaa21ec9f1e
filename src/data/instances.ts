import { Jieba } from '@node-rs/jieba';
import { dict } from '@node-rs/jieba/dict.js';
import type { BertTokenizer } from './tokenizer.js';

/** A sentence as WordPiece ids, with the number of tokens of each word (a word from the segmenter). */
export interface SegmentedSentence {
  readonly ids: number[];
  readonly wordLengths: number[];
}

let jieba: Jieba | undefined;

/**
 * Words from jieba (default dictionary, no HMM, so the result depends on the dictionary
 * only), each tokenized with WordPiece: a Chinese word of two characters is two tokens
 * that whole-word masking masks together.
 */
export function segmentSentence(tokenizer: BertTokenizer, line: string): SegmentedSentence {
  jieba ??= Jieba.withDict(dict);
  const words = jieba.cut(line, false);
  const { ids, offsets } = tokenizer.tokenize(line);
  // jieba's words tile the line: give each token the word its first character is in
  const wordLengths: number[] = [];
  let word = -1;
  let wordEnd = 0;
  let lastWord = -1;
  for (const offset of offsets) {
    const start = offset![0];
    while (start >= wordEnd && word + 1 < words.length) wordEnd += words[++word]!.length;
    if (word === lastWord) wordLengths[wordLengths.length - 1]!++;
    else {
      wordLengths.push(1);
      lastWord = word;
    }
  }
  if (words.join('').length !== line.length) {
    // not a tiling (never seen): fall back to tokenizing word by word
    const perWord: number[] = [];
    const wordIds: number[] = [];
    for (const w of words) {
      const pieces = tokenizer.tokenize(w).ids;
      if (pieces.length === 0) continue;
      wordIds.push(...pieces);
      perWord.push(pieces.length);
    }
    return { ids: wordIds, wordLengths: perWord };
  }
  return { ids, wordLengths };
}

/** An MLM instance before masking: `[CLS] tokens [SEP]`, unpadded, and each token's 1-based word (0: special). */
export interface MlmInstance {
  readonly tokenIds: Int32Array;
  readonly wordIds: Int32Array;
}

/**
 * Packs a document's sentences into instances of at most `maxLength` tokens, RoBERTa
 * style (no next-sentence task, segment 0 throughout). A sentence longer than an instance
 * is cut at word boundaries (a single word longer than an instance is cut anywhere).
 */
export function* packDocument(sentences: Iterable<SegmentedSentence>, maxLength: number, special: { cls: number; sep: number }): Generator<MlmInstance> {
  const capacity = maxLength - 2;
  let ids: number[] = [];
  let words: number[] = []; // per token, its word number in this instance
  let wordCount = 0;
  const flush = function* (): Generator<MlmInstance> {
    if (ids.length === 0) return;
    // unpadded: padding is added per batch at training time, so the file holds no [PAD]s
    const tokenIds = new Int32Array(ids.length + 2);
    const wordIds = new Int32Array(ids.length + 2);
    tokenIds[0] = special.cls;
    tokenIds.set(ids, 1);
    wordIds.set(words, 1);
    tokenIds[ids.length + 1] = special.sep;
    yield { tokenIds, wordIds };
    ids = [];
    words = [];
    wordCount = 0;
  };
  for (const sentence of sentences) {
    if (sentence.ids.length === 0) continue;
    if (ids.length + sentence.ids.length > capacity) yield* flush();
    let at = 0;
    for (const length of sentence.wordLengths) {
      // a word that fits an instance but not what is left of this one starts the next
      if (length <= capacity && ids.length + length > capacity) yield* flush();
      let left = length;
      while (left > 0) {
        if (ids.length === capacity) yield* flush();
        const take = Math.min(left, capacity - ids.length);
        // a word split across instances counts as a new word in each
        if (left === length || ids.length === 0) wordCount++;
        for (let k = 0; k < take; k++) {
          ids.push(sentence.ids[at + k]!);
          words.push(wordCount);
        }
        at += take;
        left -= take;
      }
    }
  }
  yield* flush();
}

/** A seq2seq instance: `[CLS] source [SEP] target [SEP]`, unpadded, segment 0 then 1. */
export interface Seq2SeqInstance {
  readonly tokenIds: Int32Array;
  readonly segmentIds: Int32Array;
}

export function seq2seqInstance(source: number[], target: number[], maxLength: number, special: { cls: number; sep: number }): Seq2SeqInstance {
  const a = source.slice();
  const b = target.slice();
  while (a.length + b.length + 3 > maxLength) {
    if (a.length > b.length) a.pop();
    else b.pop();
  }
  const tokenIds = Int32Array.from([special.cls, ...a, special.sep, ...b, special.sep]);
  const segmentIds = new Int32Array(tokenIds.length);
  segmentIds.fill(1, a.length + 2);
  return { tokenIds, segmentIds };
}
