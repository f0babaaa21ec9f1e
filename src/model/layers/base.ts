import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { type DropoutAttrs, FUSED_KERNEL, dropoutRuns, dropoutStream, hasFusedKernel, streamAdvance, runFusedKernel } from '../../backend/fused-kernels.js';
import { addTrailing, customOp, reshape } from './ops.js';

export type LayerArgs = NonNullable<ConstructorParameters<typeof tfl.layers.Layer>[0]>;
export type Shape = tfl.Shape;
export type ConfigDict = tf.serialization.ConfigDict;

/**
 * What every call of our layers may receive besides its inputs. `dropoutSeed` makes
 * dropout a pure function of (seed, layer), which is what lets a recomputed block
 * replay exactly the masks of its forward pass.
 */
export interface CallKwargs {
  training?: boolean;
  dropoutSeed?: number;
  /**
   * Index of this call's first sample in the whole batch (0 when absent). Dropout counts
   * its units from there, so splitting a batch into micro-batches, or among workers,
   * drops exactly the units the whole batch would. Every dropout input has the batch as
   * its leading axis, which is what makes the count per sample well defined.
   */
  firstSample?: number;
  /**
   * The sequence length dropout counts positions over, at least the batch's (a worker's
   * pieces of a step pass the step's longest record): see `dropoutIfTraining`. Absent: the
   * batch's own length.
   */
  maskLength?: number;
  /**
   * Only this call's gradients will be used, not its value: the recomputed backward pass
   * of a block, whose output value is already known. A layer that declares
   * `dropsUnusedOutput` may then skip the work that only its value needs, returning a
   * placeholder of the right shape.
   */
  outputValueUnused?: boolean;
}

/**
 * Declared by layers whose gradient does not read their inputs' values (sums, dropout),
 * so a value that reaches the output only through them is needed by no gradient.
 */
export interface ValueFreeGradient {
  readonly gradientIgnoresInputValues: true;
}

/** Declared by layers that honour `outputValueUnused`. */
export interface DropsUnusedOutput {
  readonly dropsUnusedOutput: true;
}

export function callKwargs(kwargs: unknown): CallKwargs {
  return (kwargs ?? {}) as CallKwargs;
}

export function single(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
  return Array.isArray(inputs) ? inputs[0]! : inputs;
}

export function singleShape(shape: Shape | Shape[]): Shape {
  return Array.isArray(shape[0]) ? (shape[0] as Shape) : (shape as Shape);
}

/** The serialised form of a layer's initialiser settings (the seed only when there is one). */
export function initializerConfig(initializerRange: number, seed: number | undefined): ConfigDict {
  return seed === undefined ? { initializerRange } : { initializerRange, seed };
}

/**
 * BERT's weight initialiser. With a seed, each weight of a layer draws from its own
 * stream (seed mixed with the weight's name), so a seeded model is reproducible and its
 * query, key and value kernels still differ.
 */
export function truncatedNormal(
  stddev: number,
  seed?: number,
  weightName = '',
): ReturnType<typeof tfl.initializers.truncatedNormal> {
  if (seed === undefined) return tfl.initializers.truncatedNormal({ mean: 0, stddev });
  return tfl.initializers.truncatedNormal({ mean: 0, stddev, seed: (Math.imul(seed >>> 0, 0x9e3779b1) ^ hashString(weightName)) >>> 0 });
}

/**
 * x[..., in] . kernel[in, out] (+ bias) as one 2-D matmul: a rank-3 operand would send
 * the gradient through a batched matmul and a reduction over the batch.
 */
export function denseLastAxis(x: tf.Tensor, kernel: tf.Tensor, bias?: tf.Tensor): tf.Tensor {
  const inDim = x.shape[x.shape.length - 1]!;
  const outDim = kernel.shape[1]!;
  const rows = x.size / inDim;
  const flat = x.rank === 2 ? x : reshape(x, [rows, inDim]);
  let y: tf.Tensor = tf.matMul(flat as tf.Tensor2D, kernel as tf.Tensor2D);
  if (bias) y = addTrailing(y, bias);
  return x.rank === 2 ? y : reshape(y, [...x.shape.slice(0, -1), outDim]);
}

/**
 * denseLastAxis for a caller that needs only the gradients: the product is not computed
 * (zeros stand in for it), while the gradients are those of the real projection, which
 * read x and the kernel, not the product.
 */
export function denseGradientOnly(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor): tf.Tensor {
  return customOp(([input, k, b], save) => {
    save([input!, k!]);
    const inDim = k!.shape[0]!;
    const outDim = k!.shape[1]!;
    return {
      value: tf.zeros([...input!.shape.slice(0, -1), outDim]),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xs, ks] = saved as [tf.Tensor, tf.Tensor];
        const dy2 = tf.reshape(dy, [-1, outDim]) as tf.Tensor2D;
        const x2 = tf.reshape(xs, [-1, inDim]) as tf.Tensor2D;
        return [tf.reshape(tf.matMul(dy2, ks as tf.Tensor2D, false, true), xs.shape), tf.matMul(x2, dy2, true, false), tf.sum(dy2, 0)];
      },
    };
  })(x, kernel, bias);
}

/** FNV-1a of a string: a stable per-layer salt for dropout seeds. */
export function hashString(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

function dropoutMask(shape: number[], attrs: DropoutAttrs): tf.Tensor {
  const mask = new Float32Array(shape.reduce((a, b) => a * b, 1));
  const { length, starts } = dropoutRuns(shape, attrs.countShape);
  const { state0, threshold, keep } = dropoutStream(attrs);
  for (let r = 0, i = 0; r < starts.length; r++) {
    let state = streamAdvance(state0, starts[r]!);
    for (const end = i + length; i < end; i++) {
      // splitmix32: cheap, well mixed, and fast enough to regenerate per call
      state = (state + 0x9e3779b9) >>> 0;
      let z = state;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      z = (z ^ (z >>> 16)) >>> 0;
      mask[i] = z >= threshold ? keep : 0;
    }
  }
  return tf.tensor(mask, shape, 'float32');
}

/**
 * Inverted dropout whose mask depends only on (seed, salt, offset, shape, countShape). tf.dropout
 * draws from a hidden global generator, which a recomputed block could not replay. The
 * backward pass regenerates the mask rather than keeping it; a backend with the fused
 * kernel generates and applies it in one pass. `offset`: see DropoutAttrs.
 */
export function seededDropout(x: tf.Tensor, rate: number, seed: number, salt: number, offset = 0, countShape?: number[]): tf.Tensor {
  if (rate <= 0) return x;
  const attrs: DropoutAttrs = countShape ? { rate, seed, salt, offset, countShape } : { rate, seed, salt, offset };
  if (hasFusedKernel(FUSED_KERNEL.seededDropout) && x.dtype === 'float32') {
    return customOp(([input]) => ({
      value: runFusedKernel(FUSED_KERNEL.seededDropout, { x: input! }, attrs),
      gradFunc: (dy: tf.Tensor) => runFusedKernel(FUSED_KERNEL.seededDropout, { x: dy }, attrs),
    }))(x);
  }
  return customOp(([input]) => ({
    value: tf.mul(input!, dropoutMask(input!.shape, attrs)),
    gradFunc: (dy: tf.Tensor) => tf.mul(dy, dropoutMask(dy.shape, attrs)),
  }))(x);
}

/**
 * Dropout in training, with the mask of the call's seed, this layer's salt and each
 * sample's place in the whole batch. `sequenceAxes`: the input's axes along the sequence;
 * with `kwargs.maskLength` they count that many positions whatever the batch is padded to,
 * so a sample draws the same mask in any batch: workers may pad their pieces of a step
 * each to its own longest record.
 */
export function dropoutIfTraining(x: tf.Tensor, rate: number, kwargs: CallKwargs, salt: number, sequenceAxes: readonly number[] = []): tf.Tensor {
  if (!kwargs.training || rate <= 0) return x;
  if (kwargs.dropoutSeed === undefined) {
    throw new Error('dropout in training needs a dropoutSeed kwarg; run the model through the training executor');
  }
  const maskLength = kwargs.maskLength;
  const countShape = maskLength !== undefined && sequenceAxes.length > 0 ? x.shape.map((d, axis) => (sequenceAxes.includes(axis) ? Math.max(d, maskLength) : d)) : undefined;
  const counted = countShape ?? x.shape;
  const unitsPerSample = x.rank === 0 || x.shape[0] === 0 ? 0 : counted.slice(1).reduce((a, b) => a * b, 1);
  return seededDropout(x, rate, kwargs.dropoutSeed, salt, (kwargs.firstSample ?? 0) * unitsPerSample, countShape);
}
