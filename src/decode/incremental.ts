/**
 * The Transformer's forward pass over new positions only, with cached keys and values of the
 * earlier ones, and the two model scorers built on it: `KvCacheScorer` (each step is one
 * position per row) and `FullRecomputeScorer` (each step runs the whole prefix again, the
 * reference and the benchmark's baseline).
 */
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { MASKED_SCORE } from '../model/layers/index.js';
import type { Scorer } from './scorer.js';
import { type Dense, type TransformerParts, transformerParts } from './model-parts.js';

/** Per layer: keys and values [rows, heads, positions, headSize]. */
// a type, not an interface, so that tf.tidy can return it
export type KvCache = {
  keys: tf.Tensor4D[];
  values: tf.Tensor4D[];
};

function dense(x: tf.Tensor2D, d: Dense): tf.Tensor2D {
  return tf.add(tf.matMul(x, d.kernel as tf.Tensor2D), d.bias);
}

/**
 * Hidden states [rows, T, H] of T new positions per row, and the cache grown by them.
 * `bias` is the additive attention mask [rows, 1, T, P + T] over the P cached positions
 * then the new ones; `positions` the position ids [rows, T].
 */
export function forwardPositions(
  parts: TransformerParts,
  tokens: tf.Tensor2D,
  segments: tf.Tensor2D,
  positions: tf.Tensor2D,
  bias: tf.Tensor,
  cache: KvCache | null,
): { hidden: tf.Tensor3D; cache: KvCache } {
  const [rows, length] = tokens.shape;
  const { heads, headSize, hiddenSize } = parts;
  const embedded = tf.add(tf.add(parts.tokenEmbedding(tokens), parts.segmentEmbedding(segments)), tf.reshape(tf.gather(parts.positionTable, tf.reshape(positions, [-1])), [rows, length, hiddenSize]));
  let x = tf.reshape(parts.embeddingNorm(embedded), [rows * length, hiddenSize]) as tf.Tensor2D;
  const toHeads = (t: tf.Tensor2D): tf.Tensor4D => tf.transpose(tf.reshape(t, [rows, length, heads, headSize]), [0, 2, 1, 3]);
  const keys: tf.Tensor4D[] = [];
  const values: tf.Tensor4D[] = [];
  parts.blocks.forEach((block, i) => {
    const q = toHeads(dense(x, block.query));
    let k = toHeads(dense(x, block.key));
    let v = toHeads(dense(x, block.value));
    if (cache) {
      k = tf.concat([cache.keys[i]!, k], 2);
      v = tf.concat([cache.values[i]!, v], 2);
    }
    keys.push(k);
    values.push(v);
    // as MultiHeadSelfAttention: the 1/sqrt(d) scale on the queries, the mask added to the scores
    const scores = tf.add(tf.matMul(tf.mul(q, 1 / Math.sqrt(headSize)), k, false, true), bias);
    const context = tf.reshape(tf.transpose(tf.matMul(tf.softmax(scores, -1), v), [0, 2, 1, 3]), [rows * length, heads * headSize]) as tf.Tensor2D;
    x = block.attentionNorm(tf.add(x, dense(context, block.output))) as tf.Tensor2D;
    x = block.feedForwardNorm(tf.add(x, block.feedForward(x))) as tf.Tensor2D;
  });
  return { hidden: tf.reshape(x, [rows, length, hiddenSize]), cache: { keys, values } };
}

/** Log-probabilities [rows, vocab] of the next token from hidden states [rows, H] (the MLM head). */
export function nextTokenLogProbs(parts: TransformerParts, hidden: tf.Tensor2D): tf.Tensor2D {
  return tf.logSoftmax(parts.mlmLogits(hidden) as tf.Tensor2D);
}

/** What a model scorer decodes from: the token ids of each input. */
export interface ModelScorerOptions {
  /**
   * unilm: `[CLS] source [SEP]` (segment 0); generated tokens are segment 1 and see the
   * whole source and the earlier targets. lm: `[CLS] prompt` (segment 0), continued causally.
   */
  readonly inputs: readonly (readonly number[])[];
}

function checkInputs(parts: TransformerParts, inputs: readonly (readonly number[])[]): void {
  if (inputs.length === 0) throw new RangeError('no inputs to decode');
  inputs.forEach((ids, i) => {
    if (ids.length === 0) throw new RangeError(`input ${i} has no tokens`);
    if (ids.length >= parts.maxPositions) throw new RangeError(`input ${i} has ${ids.length} tokens: the model's ${parts.maxPositions} positions leave no room to generate`);
    for (const id of ids) if (!Number.isInteger(id) || id <= 0 || id >= parts.vocabSize) throw new RangeError(`input ${i} has token id ${id}, outside 1..${parts.vocabSize - 1} (0 is padding)`);
  });
}

/** Segment of the generated tokens: 1 after a unilm source, 0 continuing an lm prompt. */
function targetSegment(parts: TransformerParts): number {
  return parts.application === 'unilm' ? 1 : 0;
}

function isIdentity(parents: Int32Array, rows: number): boolean {
  return parents.length === rows && parents.every((p, i) => p === i);
}

function gatherHost(values: Int32Array, parents: Int32Array): Int32Array {
  return Int32Array.from(parents, (p) => values[p]!);
}

/**
 * The scorer with a key/value cache: the inputs are encoded once (padded to the longest,
 * padding masked), then each step runs one position per row against the cached keys and
 * values of every earlier position; `select` gathers the cache rows.
 */
export class KvCacheScorer implements Scorer {
  readonly vocabSize: number;
  private readonly parts: TransformerParts;
  private readonly inputs: readonly (readonly number[])[];
  private cache: KvCache | null = null;
  /** [rows, positions]: 0 where a cached position may be attended to, MASKED_SCORE where it is padding. */
  private keyBias: tf.Tensor2D | null = null;
  /** The position id of each row's next token. */
  private nextPosition: Int32Array;
  private rowCount: number;

  constructor(model: tfl.LayersModel | TransformerParts, options: ModelScorerOptions) {
    this.parts = model instanceof tfl.LayersModel ? transformerParts(model) : model;
    checkInputs(this.parts, options.inputs);
    this.inputs = options.inputs;
    this.vocabSize = this.parts.vocabSize;
    this.rowCount = options.inputs.length;
    this.nextPosition = Int32Array.from(options.inputs, (ids) => ids.length);
  }

  get rows(): number {
    return this.rowCount;
  }

  step(lastTokens: Int32Array | null): Float32Array {
    return lastTokens === null ? this.encode() : this.advance(lastTokens);
  }

  private encode(): Float32Array {
    if (this.cache) throw new Error('KvCacheScorer: the inputs are encoded already; pass the last tokens');
    const rows = this.inputs.length;
    const length = Math.max(...this.inputs.map((ids) => ids.length));
    const ids = new Int32Array(rows * length);
    this.inputs.forEach((input, r) => ids.set(input, r * length));
    const positions = Int32Array.from({ length: rows * length }, (_, i) => i % length);
    const last = Int32Array.from(this.inputs, (input, r) => r * length + input.length - 1);
    const out = tf.tidy(() => {
      const tokens = tf.tensor2d(ids, [rows, length], 'int32');
      const keyBias = tf.mul(tf.cast(tf.equal(tokens, 0), 'float32'), MASKED_SCORE) as tf.Tensor2D;
      // unilm: the source attends to itself both ways; lm: causally. Padding is never attended to.
      let bias: tf.Tensor = tf.reshape(keyBias, [rows, 1, 1, length]);
      if (this.parts.application === 'lm') {
        bias = tf.add(bias, tf.reshape(tf.mul(tf.sub(1, tf.linalg.bandPart(tf.ones([length, length]), -1, 0)), MASKED_SCORE), [1, 1, length, length]));
      }
      const { hidden, cache } = forwardPositions(this.parts, tokens, tf.zerosLike(tokens), tf.tensor2d(positions, [rows, length], 'int32'), bias, null);
      const lastHidden = tf.gather(tf.reshape(hidden, [rows * length, this.parts.hiddenSize]), tf.tensor1d(last, 'int32')) as tf.Tensor2D;
      return { logProbs: nextTokenLogProbs(this.parts, lastHidden), cache, keyBias };
    });
    this.cache = out.cache;
    this.keyBias = out.keyBias;
    return this.read(out.logProbs);
  }

  private advance(lastTokens: Int32Array): Float32Array {
    if (!this.cache || !this.keyBias) throw new Error('KvCacheScorer: the first step takes no tokens (it encodes the inputs)');
    const rows = this.rowCount;
    if (lastTokens.length !== rows) throw new RangeError(`KvCacheScorer: ${lastTokens.length} tokens for ${rows} rows`);
    for (let r = 0; r < rows; r++) {
      if (this.nextPosition[r]! >= this.parts.maxPositions) throw new RangeError(`row ${r} is at position ${this.nextPosition[r]}: past the model's ${this.parts.maxPositions} positions`);
    }
    const old = { cache: this.cache, keyBias: this.keyBias };
    const out = tf.tidy(() => {
      const keyBias = tf.concat([old.keyBias, tf.zeros([rows, 1])], 1) as tf.Tensor2D;
      const tokens = tf.tensor2d(lastTokens, [rows, 1], 'int32');
      const segments = tf.fill([rows, 1], targetSegment(this.parts), 'int32') as tf.Tensor2D;
      const positions = tf.tensor2d(this.nextPosition, [rows, 1], 'int32');
      const bias = tf.reshape(keyBias, [rows, 1, 1, keyBias.shape[1]]);
      const { hidden, cache } = forwardPositions(this.parts, tokens, segments, positions, bias, old.cache);
      return { logProbs: nextTokenLogProbs(this.parts, tf.reshape(hidden, [rows, this.parts.hiddenSize]) as tf.Tensor2D), cache, keyBias };
    });
    disposeCache(old.cache);
    old.keyBias.dispose();
    this.cache = out.cache;
    this.keyBias = out.keyBias;
    this.nextPosition = this.nextPosition.map((p) => p + 1);
    return this.read(out.logProbs);
  }

  select(parents: Int32Array): void {
    if (!this.cache || !this.keyBias) throw new Error('KvCacheScorer: select comes after the first step');
    for (const p of parents) if (p < 0 || p >= this.rowCount) throw new RangeError(`KvCacheScorer: parent row ${p} of ${this.rowCount}`);
    if (isIdentity(parents, this.rowCount)) return;
    const old = { cache: this.cache, keyBias: this.keyBias };
    const out = tf.tidy(() => {
      const index = tf.tensor1d(parents, 'int32');
      return {
        cache: { keys: old.cache.keys.map((k) => tf.gather(k, index)), values: old.cache.values.map((v) => tf.gather(v, index)) },
        keyBias: tf.gather(old.keyBias, index),
      };
    });
    disposeCache(old.cache);
    old.keyBias.dispose();
    this.cache = out.cache;
    this.keyBias = out.keyBias;
    this.nextPosition = gatherHost(this.nextPosition, parents);
    this.rowCount = parents.length;
  }

  private read(logProbs: tf.Tensor): Float32Array {
    const data = logProbs.dataSync() as Float32Array;
    logProbs.dispose();
    return data;
  }

  dispose(): void {
    if (this.cache) disposeCache(this.cache);
    this.keyBias?.dispose();
    this.cache = null;
    this.keyBias = null;
  }
}

function disposeCache(cache: KvCache): void {
  tf.dispose([...cache.keys, ...cache.values]);
}

/**
 * The scorer without a cache: every step runs the model over each row's whole sequence (input
 * and tokens so far) with the model's own attention mask, and reads the last position. What
 * the cache must equal, and what it is measured against.
 */
export class FullRecomputeScorer implements Scorer {
  readonly vocabSize: number;
  private readonly parts: TransformerParts;
  private sequences: { tokens: number[]; segments: number[] }[];

  constructor(model: tfl.LayersModel | TransformerParts, options: ModelScorerOptions) {
    this.parts = model instanceof tfl.LayersModel ? transformerParts(model) : model;
    checkInputs(this.parts, options.inputs);
    this.vocabSize = this.parts.vocabSize;
    this.sequences = options.inputs.map((ids) => ({ tokens: [...ids], segments: ids.map(() => 0) }));
  }

  get rows(): number {
    return this.sequences.length;
  }

  step(lastTokens: Int32Array | null): Float32Array {
    if (lastTokens) {
      if (lastTokens.length !== this.rows) throw new RangeError(`FullRecomputeScorer: ${lastTokens.length} tokens for ${this.rows} rows`);
      const segment = targetSegment(this.parts);
      this.sequences.forEach((s, r) => {
        s.tokens.push(lastTokens[r]!);
        s.segments.push(segment);
      });
    }
    const rows = this.rows;
    const length = Math.max(...this.sequences.map((s) => s.tokens.length));
    if (length > this.parts.maxPositions) throw new RangeError(`a sequence of ${length} tokens is past the model's ${this.parts.maxPositions} positions`);
    const ids = new Int32Array(rows * length);
    const segs = new Int32Array(rows * length);
    this.sequences.forEach((s, r) => {
      ids.set(s.tokens, r * length);
      segs.set(s.segments, r * length);
    });
    const positions = Int32Array.from({ length: rows * length }, (_, i) => i % length);
    const last = Int32Array.from(this.sequences, (s, r) => r * length + s.tokens.length - 1);
    const logProbs = tf.tidy(() => {
      const tokens = tf.tensor2d(ids, [rows, length], 'int32');
      const segments = tf.tensor2d(segs, [rows, length], 'int32');
      const bias = this.parts.attentionMask(tokens, segments);
      const { hidden } = forwardPositions(this.parts, tokens, segments, tf.tensor2d(positions, [rows, length], 'int32'), bias, null);
      const lastHidden = tf.gather(tf.reshape(hidden, [rows * length, this.parts.hiddenSize]), tf.tensor1d(last, 'int32')) as tf.Tensor2D;
      return nextTokenLogProbs(this.parts, lastHidden);
    });
    const data = logProbs.dataSync() as Float32Array;
    logProbs.dispose();
    return data;
  }

  select(parents: Int32Array): void {
    this.sequences = Array.from(parents, (p) => {
      const s = this.sequences[p];
      if (!s) throw new RangeError(`FullRecomputeScorer: parent row ${p} of ${this.sequences.length}`);
      return { tokens: [...s.tokens], segments: [...s.segments] };
    });
  }

  dispose(): void {
    this.sequences = [];
  }
}
