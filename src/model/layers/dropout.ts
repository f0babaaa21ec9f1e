import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { addSameShape, addTrailing } from './ops.js';
import {
  type ConfigDict, type LayerArgs, type Shape, type ValueFreeGradient, callKwargs, dropoutIfTraining, hashString, single, singleShape,
} from './base.js';

export interface SeededDropoutArgs extends LayerArgs {
  rate: number;
}

/**
 * Dropout whose mask is a function of the call's `dropoutSeed` and this layer's name. An
 * input of rank 3 is [batch, sequence, features]: its axis 1 is counted as a sequence
 * (see dropoutIfTraining).
 */
export class SeededDropout extends tfl.layers.Layer implements ValueFreeGradient {
  static className = 'SeededDropout';
  readonly gradientIgnoresInputValues = true;
  readonly rate: number;
  private readonly salt: number;

  constructor(args: SeededDropoutArgs) {
    super(args);
    if (!(args.rate >= 0 && args.rate < 1)) throw new Error(`${this.name}: dropout rate must be in [0, 1), got ${args.rate}`);
    this.rate = args.rate;
    this.salt = hashString(this.name);
  }

  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: object): tf.Tensor {
    const x = single(inputs);
    return dropoutIfTraining(x, this.rate, callKwargs(kwargs), this.salt, x.rank === 3 ? [1] : []);
  }

  override computeOutputShape(inputShape: Shape | Shape[]): Shape {
    return singleShape(inputShape);
  }

  override getConfig(): ConfigDict {
    return { ...super.getConfig(), rate: this.rate };
  }
}
tf.serialization.registerClass(SeededDropout);

/** A learned bias over the last axis (the MLM output bias). */
export class BiasAdd extends tfl.layers.Layer {
  static className = 'BiasAdd';
  private bias!: tfl.LayerVariable;

  override build(inputShape: Shape | Shape[]): void {
    const width = singleShape(inputShape).at(-1)!;
    this.bias = this.addWeight('bias', [width], 'float32', tfl.initializers.zeros());
    this.built = true;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return addTrailing(single(inputs), this.bias.read());
  }

  override computeOutputShape(inputShape: Shape | Shape[]): Shape {
    return singleShape(inputShape);
  }
}
tf.serialization.registerClass(BiasAdd);

/** The sum of same-shape inputs (residual connections), keeping nothing for backprop. */
export class Residual extends tfl.layers.Layer implements ValueFreeGradient {
  static className = 'Residual';
  readonly gradientIgnoresInputValues = true;

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    const [first, ...rest] = inputs as tf.Tensor[];
    return rest.reduce((sum, t) => addSameShape(sum, t), first!);
  }

  override computeOutputShape(inputShape: Shape | Shape[]): Shape {
    return (inputShape as Shape[])[0]!;
  }
}
tf.serialization.registerClass(Residual);
