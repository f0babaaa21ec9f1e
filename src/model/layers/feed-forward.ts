import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { ACTIVATIONS, type ActivationName } from '../config.js';
import { activation } from './activations.js';
import {
  type ConfigDict, type DropsUnusedOutput, type LayerArgs, type Shape, callKwargs, denseGradientOnly, denseLastAxis, initializerConfig, single,
  singleShape, truncatedNormal,
} from './base.js';

export interface DenseArgs extends LayerArgs {
  units: number;
  activation?: ActivationName;
  initializerRange?: number;
  /** Seed of the weight initialiser; unseeded when absent. */
  seed?: number;
}

function checkedActivation(name: ActivationName | undefined, layer: string): ActivationName {
  const chosen = name ?? 'linear';
  if (!ACTIVATIONS.includes(chosen)) {
    throw new Error(`${layer}: unknown activation "${String(chosen)}"; use one of ${ACTIVATIONS.join(', ')}`);
  }
  return chosen;
}

/** A dense projection of the last axis (kernel + bias + activation), as one 2-D matmul. */
export class Projection extends tfl.layers.Layer {
  static className = 'Projection';
  readonly units: number;
  readonly activationName: ActivationName;
  readonly initializerRange: number;
  readonly seed: number | undefined;
  private kernel!: tfl.LayerVariable;
  private bias!: tfl.LayerVariable;

  constructor(args: DenseArgs) {
    super(args);
    this.units = args.units;
    this.activationName = checkedActivation(args.activation, this.name);
    this.initializerRange = args.initializerRange ?? 0.02;
    this.seed = args.seed;
  }

  override build(inputShape: Shape | Shape[]): void {
    const width = singleShape(inputShape).at(-1)!;
    this.kernel = this.addWeight('kernel', [width, this.units], 'float32', truncatedNormal(this.initializerRange, this.seed, 'kernel'));
    this.bias = this.addWeight('bias', [this.units], 'float32', tfl.initializers.zeros());
    this.built = true;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return activation(this.activationName)(denseLastAxis(single(inputs), this.kernel.read(), this.bias.read()));
  }

  override computeOutputShape(inputShape: Shape | Shape[]): Shape {
    return [...singleShape(inputShape).slice(0, -1), this.units];
  }

  override getConfig(): ConfigDict {
    return {
      ...super.getConfig(),
      units: this.units,
      activation: this.activationName,
      ...initializerConfig(this.initializerRange, this.seed),
    };
  }
}
tf.serialization.registerClass(Projection);

export interface FeedForwardArgs extends LayerArgs {
  units: number;
  activation: ActivationName;
  initializerRange?: number;
  /** Seed of the weight initialiser; unseeded when absent. */
  seed?: number;
}

/** Position-wise feed-forward: dense(units, activation) then dense back to the input width. */
export class FeedForward extends tfl.layers.Layer implements DropsUnusedOutput {
  static className = 'FeedForward';
  readonly dropsUnusedOutput = true;
  readonly units: number;
  readonly activationName: ActivationName;
  readonly initializerRange: number;
  readonly seed: number | undefined;
  private kernels: tfl.LayerVariable[] = [];

  constructor(args: FeedForwardArgs) {
    super(args);
    this.units = args.units;
    this.activationName = checkedActivation(args.activation, this.name);
    this.initializerRange = args.initializerRange ?? 0.02;
    this.seed = args.seed;
  }

  override build(inputShape: Shape | Shape[]): void {
    const width = singleShape(inputShape).at(-1)!;
    const zeros = tfl.initializers.zeros();
    const init = (name: string): ReturnType<typeof truncatedNormal> => truncatedNormal(this.initializerRange, this.seed, name);
    this.kernels = [
      this.addWeight('intermediate/kernel', [width, this.units], 'float32', init('intermediate/kernel')),
      this.addWeight('intermediate/bias', [this.units], 'float32', zeros),
      this.addWeight('output/kernel', [this.units, width], 'float32', init('output/kernel')),
      this.addWeight('output/bias', [width], 'float32', zeros),
    ];
    this.built = true;
  }

  override call(inputs: tf.Tensor | tf.Tensor[], kwargs?: object): tf.Tensor {
    const [k1, b1, k2, b2] = this.kernels.map((w) => w.read()) as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
    const hidden = activation(this.activationName)(denseLastAxis(single(inputs), k1, b1));
    // the output projection is a third of the layer's work, and a recomputed block never reads its value
    return callKwargs(kwargs).outputValueUnused ? denseGradientOnly(hidden, k2, b2) : denseLastAxis(hidden, k2, b2);
  }

  override computeOutputShape(inputShape: Shape | Shape[]): Shape {
    return singleShape(inputShape);
  }

  override getConfig(): ConfigDict {
    return {
      ...super.getConfig(),
      units: this.units,
      activation: this.activationName,
      ...initializerConfig(this.initializerRange, this.seed),
    };
  }
}
tf.serialization.registerClass(FeedForward);
