/**
 * Whole-word masking, the one definition both static masking (at prepare time) and
 * dynamic masking (per epoch, at training time) use.
 */

export interface MaskingPolicy {
  /** Probability that a word is chosen (BERT: 0.15). */
  readonly rate: number;
  /** Of a chosen word's tokens: this share becomes [MASK]... */
  readonly maskToken: number;
  /** ...this share a random token; the rest stay as they are. */
  readonly randomToken: number;
}

export const BERT_MASKING: MaskingPolicy = { rate: 0.15, maskToken: 0.8, randomToken: 0.1 };

/** A small seeded generator (SplitMix32): fast, and the same stream on every platform. */
export function seededRandom(...seeds: number[]): () => number {
  let state = 0x9e3779b9;
  for (const s of seeds) state = Math.imul(state ^ (s >>> 0), 0x85ebca6b) + 0x68e31da4;
  return () => {
    state = (state + 0x9e3779b9) | 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  };
}

export interface MaskedInstance {
  /** The model's input: chosen tokens replaced by [MASK], a random token, or kept. */
  readonly tokenIds: Int32Array;
  /** 0 where nothing is predicted, else the original id + 1 (bert4keras's `mask_ids`). */
  readonly maskIds: Int32Array;
}

/**
 * Masks whole words: `wordIds[i]` is the 1-based word of token i (0 for [CLS], [SEP] and
 * padding); each word is chosen with probability `rate`, and every token of a chosen
 * word independently becomes [MASK] (80%), a random non-special token (10%) or stays (10%).
 */
export function maskWholeWords(tokenIds: ArrayLike<number>, wordIds: ArrayLike<number>, random: () => number, vocab: { mask: number; size: number; specials: ReadonlySet<number> }, policy: MaskingPolicy = BERT_MASKING): MaskedInstance {
  const n = tokenIds.length;
  const input = Int32Array.from(tokenIds);
  const maskIds = new Int32Array(n);
  let word = 0;
  let chosen = false;
  for (let i = 0; i < n; i++) {
    const w = wordIds[i]!;
    if (w === 0) continue;
    if (w !== word) {
      word = w;
      chosen = random() < policy.rate;
    }
    if (!chosen) continue;
    const original = tokenIds[i]!;
    maskIds[i] = original + 1;
    const r = random();
    if (r < policy.maskToken) input[i] = vocab.mask;
    else if (r < policy.maskToken + policy.randomToken && vocab.size > vocab.specials.size) {
      let id: number;
      do id = Math.floor(random() * vocab.size);
      while (vocab.specials.has(id));
      input[i] = id;
    }
  }
  return { tokenIds: input, maskIds };
}
