import * as tf from '@tensorflow/tfjs-core';
import type { ActivationName } from '../config.js';
import { customOp } from './base.js';

const SQRT1_2 = Math.SQRT1_2;
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/**
 * Exact GELU x*Phi(x) with a closed-form gradient Phi(x) + x*phi(x): autodiff through
 * erf would keep four intermediates alive per call and launch twice the kernels.
 */
const geluErf = customOp(([x], save) => {
  const cdf = tf.mul(0.5, tf.add(1, tf.erf(tf.mul(x!, SQRT1_2))));
  // keeping Phi(x) costs one tensor and saves four kernels (erf among them) in backward
  save([x!, cdf]);
  return {
    value: tf.mul(x!, cdf),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [xs, phiCdf] = saved as [tf.Tensor, tf.Tensor];
      const pdf = tf.exp(tf.mul(-0.5, tf.square(xs)));
      return tf.mul(dy, tf.add(phiCdf, tf.mul(tf.mul(xs, INV_SQRT_2PI), pdf)));
    },
  };
});

function geluTanh(x: tf.Tensor): tf.Tensor {
  const inner = tf.mul(Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, tf.pow(x, 3))));
  return tf.mul(tf.mul(0.5, x), tf.add(1, tf.tanh(inner)));
}

export function activation(name: ActivationName): (x: tf.Tensor) => tf.Tensor {
  switch (name) {
    case 'gelu':
      return geluErf;
    case 'gelu_new':
      return geluTanh;
    case 'relu':
      return (x) => tf.relu(x);
    case 'swish':
    case 'silu':
      return (x) => tf.mul(x, tf.sigmoid(x));
    case 'tanh':
      return (x) => tf.tanh(x);
    case 'linear':
      return (x) => x;
  }
}
