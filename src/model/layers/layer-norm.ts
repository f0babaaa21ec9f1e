import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { type ConfigDict, type LayerArgs, type Shape, single, singleShape } from './base.js';
import { FUSED_KERNEL, hasFusedKernel, runFusedKernel, runFusedKernelOutputs } from '../../backend/fused-kernels.js';
import { customOp } from './ops.js';

export interface LayerNormArgs extends LayerArgs {
  epsilon?: number;
}

/**
 * Layer normalisation over the last axis with a hand-written backward pass: the
 * autodiff of a broadcast gamma/beta went through Tile's gradient (one op per
 * slice), which made a whole training step 4x slower.
 */
function layerNormOp(epsilon: number): (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) => tf.Tensor {
  const fused = fusedLayerNormOp(epsilon);
  const ops = layerNormOpsOp(epsilon);
  return (x, gamma, beta) => (hasFusedKernel(FUSED_KERNEL.layerNorm) && x.dtype === 'float32' ? fused : ops)(x, gamma, beta);
}

/** On a backend's fused kernels: x and gamma are kept, and the backward recomputes the row statistics. */
function fusedLayerNormOp(epsilon: number): (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) => tf.Tensor {
  return customOp(([x, gamma, beta], save) => {
    save([x!, gamma!]);
    return {
      value: runFusedKernel(FUSED_KERNEL.layerNorm, { x: x!, gamma: gamma!, beta: beta! }, { epsilon }),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        runFusedKernelOutputs(FUSED_KERNEL.layerNormGrad, { dy, x: saved[0]!, gamma: saved[1]! }, { epsilon }),
    };
  });
}

function layerNormOpsOp(epsilon: number): (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) => tf.Tensor {
  return customOp(([x, gamma, beta], save) => {
    const mean = tf.mean(x!, -1, true);
    const centered = tf.sub(x!, mean);
    const variance = tf.mean(tf.square(centered), -1, true);
    const rstd = tf.rsqrt(tf.add(variance, epsilon));
    const normed = tf.mul(centered, rstd);
    save([normed, rstd, gamma!]);
    return {
      value: tf.add(tf.mul(normed, gamma!), beta!),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xhat, r, g] = saved as [tf.Tensor, tf.Tensor, tf.Tensor];
        const width = g.shape[0]!;
        const dy2 = tf.reshape(dy, [-1, width]);
        const dBeta = tf.sum(dy2, 0);
        const dGamma = tf.sum(tf.mul(dy2, tf.reshape(xhat, [-1, width])), 0);
        const dxhat = tf.mul(dy, g);
        const dx = tf.mul(
          r,
          tf.sub(tf.sub(dxhat, tf.mean(dxhat, -1, true)), tf.mul(xhat, tf.mean(tf.mul(dxhat, xhat), -1, true))),
        );
        return [dx, dGamma, dBeta];
      },
    };
  });
}

export class LayerNorm extends tfl.layers.Layer {
  static className = 'LayerNorm';
  readonly epsilon: number;
  private gamma!: tfl.LayerVariable;
  private beta!: tfl.LayerVariable;
  private readonly op: (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) => tf.Tensor;

  constructor(args: LayerNormArgs = {}) {
    super(args);
    this.epsilon = args.epsilon ?? 1e-12;
    this.op = layerNormOp(this.epsilon);
  }

  override build(inputShape: Shape | Shape[]): void {
    const width = singleShape(inputShape).at(-1);
    if (width == null) throw new Error(`${this.name}: the last input dimension must be known`);
    this.gamma = this.addWeight('gamma', [width], 'float32', tfl.initializers.ones());
    this.beta = this.addWeight('beta', [width], 'float32', tfl.initializers.zeros());
    this.built = true;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return this.op(single(inputs), this.gamma.read(), this.beta.read());
  }

  override computeOutputShape(inputShape: Shape | Shape[]): Shape {
    return singleShape(inputShape);
  }

  override getConfig(): ConfigDict {
    return { ...super.getConfig(), epsilon: this.epsilon };
  }
}
tf.serialization.registerClass(LayerNorm);
