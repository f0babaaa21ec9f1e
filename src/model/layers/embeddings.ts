import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import {
  type ConfigDict,
  type LayerArgs,
  type Shape,
  single,
  singleShape,
  truncatedNormal,
  initializerConfig,
} from './base.js';
import { addTrailing, reshape } from './ops.js';

/** In the symbolic graph only shapes are known: ids are [B,S], hidden states [B,S,H]. */
function isHiddenStates(shape: readonly (number | null)[], width: number): boolean {
  return shape.length >= 3 && shape[shape.length - 1] === width;
}

export interface TokenEmbeddingArgs extends LayerArgs {
  inputDim: number;
  outputDim: number;
  initializerRange?: number;
  /** Seed of the weight initialiser; unseeded when absent. */
  seed?: number;
}

/**
 * Token ids [B,S] -> vectors [B,S,H]; called again on float hidden states [..., H] it
 * multiplies by the transposed table, which is how the MLM head ties its output
 * projection to the input embedding (one shared layer, two nodes in the graph). The mode
 * follows from the input (int ids or float states) because tfjs-layers' predict() drops
 * per-node call arguments.
 */
export class TokenEmbedding extends tfl.layers.Layer {
  static className = 'TokenEmbedding';
  readonly inputDim: number;
  readonly outputDim: number;
  readonly initializerRange: number;
  readonly seed: number | undefined;
  private embeddings!: tfl.LayerVariable;

  constructor(args: TokenEmbeddingArgs) {
    super(args);
    this.inputDim = args.inputDim;
    this.outputDim = args.outputDim;
    this.initializerRange = args.initializerRange ?? 0.02;
    this.seed = args.seed;
  }

  override build(): void {
    this.embeddings = this.addWeight(
      'embeddings',
      [this.inputDim, this.outputDim],
      'float32',
      truncatedNormal(this.initializerRange, this.seed, 'embeddings'),
    );
    this.built = true;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    const x = single(inputs);
    const table = this.embeddings.read();
    if (x.dtype === 'float32' && x.rank >= 2 && x.shape[x.rank - 1] === this.outputDim) {
      const rows = x.size / this.outputDim;
      const flat = x.rank === 2 ? x : reshape(x, [rows, this.outputDim]);
      const logits = tf.matMul(flat as tf.Tensor2D, table as tf.Tensor2D, false, true);
      return x.rank === 2 ? logits : reshape(logits, [...x.shape.slice(0, -1), this.inputDim]);
    }
    const ids = x.dtype === 'int32' ? x : tf.cast(x, 'int32');
    return reshape(tf.gather(table, tf.reshape(ids, [-1])), [...x.shape, this.outputDim]);
  }

  override computeOutputShape(inputShape: Shape | Shape[]): Shape {
    const shape = singleShape(inputShape);
    if (isHiddenStates(shape, this.outputDim)) return [...shape.slice(0, -1), this.inputDim];
    return [...shape, this.outputDim];
  }

  override getConfig(): ConfigDict {
    return {
      ...super.getConfig(),
      inputDim: this.inputDim,
      outputDim: this.outputDim,
      ...initializerConfig(this.initializerRange, this.seed),
    };
  }
}
tf.serialization.registerClass(TokenEmbedding);

export interface PositionEmbeddingArgs extends LayerArgs {
  maxLength: number;
  outputDim: number;
  initializerRange?: number;
  /** Seed of the weight initialiser; unseeded when absent. */
  seed?: number;
}

/** Adds a learned vector per position (BERT's absolute positions). */
export class PositionEmbedding extends tfl.layers.Layer {
  static className = 'PositionEmbedding';
  readonly maxLength: number;
  readonly outputDim: number;
  readonly initializerRange: number;
  readonly seed: number | undefined;
  private embeddings!: tfl.LayerVariable;

  constructor(args: PositionEmbeddingArgs) {
    super(args);
    this.maxLength = args.maxLength;
    this.outputDim = args.outputDim;
    this.initializerRange = args.initializerRange ?? 0.02;
    this.seed = args.seed;
  }

  override build(): void {
    this.embeddings = this.addWeight(
      'embeddings',
      [this.maxLength, this.outputDim],
      'float32',
      truncatedNormal(this.initializerRange, this.seed, 'embeddings'),
    );
    this.built = true;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    const x = single(inputs);
    const length = x.shape[1]!;
    if (length > this.maxLength) {
      throw new Error(`${this.name}: sequence length ${length} exceeds max_position_embeddings ${this.maxLength}`);
    }
    const table = this.embeddings.read();
    const positions = length === this.maxLength ? table : tf.slice(table, [0, 0], [length, this.outputDim]);
    return addTrailing(x, positions);
  }

  override computeOutputShape(inputShape: Shape | Shape[]): Shape {
    return singleShape(inputShape);
  }

  override getConfig(): ConfigDict {
    return {
      ...super.getConfig(),
      maxLength: this.maxLength,
      outputDim: this.outputDim,
      ...initializerConfig(this.initializerRange, this.seed),
    };
  }
}
tf.serialization.registerClass(PositionEmbedding);
