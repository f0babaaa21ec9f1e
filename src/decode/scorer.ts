/**
 * What the searches call for next-token log-probabilities. A scorer holds one row per live
 * hypothesis (at the start, one per input); the searches tell it which rows continue
 * (`select`) and which token each row appended (`step`). The model scorers keep a key/value
 * cache per row; a test scorer can return hand-set distributions.
 */
export interface Scorer {
  /** Size of the distributions `step` returns. */
  readonly vocabSize: number;
  /** Rows the next `step` scores. */
  readonly rows: number;
  /**
   * Log-probabilities of the next token, [rows, vocab] row-major. `lastTokens[i]`: the token
   * row i appended since the previous call; null on the first call (the inputs alone).
   */
  step(lastTokens: Int32Array | null): Float32Array;
  /**
   * Row i of the next step continues row `parents[i]` of the last one: beam reordering,
   * several samples per input, finished rows dropped. Rows may repeat or be left out.
   */
  select(parents: Int32Array): void;
  /** Frees what the scorer holds (tensors of a cache). */
  dispose(): void;
}
