import * as tf from '@tensorflow/tfjs-core';
import { FUSED_KERNEL, hasFusedKernel, runFusedKernel } from '../../backend/fused-kernels.js';
import type { ActivationName } from '../config.js';
import { customOp } from './ops.js';

const SQRT1_2 = Math.SQRT1_2;
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);
// Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7, i.e. float32 precision for GELU (and
// the same erf that tfjs's cpu backend uses).
const ERF_P = 0.3275911;
const ERF_A = [0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429] as const;

/**
 * exp(y) for y <= 0 as s/(1-s) with s = sigmoid(y). On tfjs-backend-wasm, Sigmoid is
 * vectorised XNNPACK (1.6 ms per million values) while Exp and Erf are scalar libm
 * (16 and 24 ms): this is what keeps GELU from dominating the feed-forward layers.
 */
export function expNonPositive(y: tf.Tensor): tf.Tensor {
  const s = tf.sigmoid(y);
  return tf.div(s, tf.sub(1, s));
}

/**
 * Phi(x) and the Gaussian kernel exp(-x^2/2), which the erf formula and the GELU gradient
 * share. Each step is its own scope: over [B,S,4H] the twenty-odd temporaries would
 * otherwise all be alive at once, the peak of a recomputed block.
 */
function normalCdfAndKernel(x: tf.Tensor): { cdf: tf.Tensor; kernel: tf.Tensor } {
  const kernel = tf.tidy(() => expNonPositive(tf.mul(tf.square(x), -0.5)));
  const magnitude = tf.abs(x);
  const t = tf.tidy(() => tf.reciprocal(tf.add(1, tf.mul(magnitude, ERF_P * SQRT1_2))));
  let poly = tf.mul(t, ERF_A[4]);
  for (let i = 3; i >= 0; i--) {
    const next = tf.tidy(() => tf.mul(tf.add(poly, ERF_A[i]!), t));
    poly.dispose();
    poly = next;
  }
  const cdf = tf.tidy(() => {
    const erfAbs = tf.sub(1, tf.mul(poly, kernel));
    // x/(|x|+tiny) is sign(x) wherever erf is not ~0; the Sign kernel is scalar on wasm (7 ms per million)
    const sign = tf.div(x, tf.add(magnitude, 1e-30));
    return tf.add(0.5, tf.mul(tf.mul(sign, erfAbs), 0.5));
  });
  tf.dispose([magnitude, t, poly]);
  return { cdf, kernel };
}

/** Exact GELU x*Phi(x) with the closed-form gradient Phi(x) + x*phi(x), in tfjs ops. */
const geluErfOps = customOp(([x], save) => {
  const { cdf, kernel } = normalCdfAndKernel(x!);
  save([x!, cdf, kernel]);
  return {
    value: tf.mul(x!, cdf),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [xs, phiCdf, gauss] = saved as [tf.Tensor, tf.Tensor, tf.Tensor];
      return tf.mul(dy, tf.add(phiCdf, tf.mul(tf.mul(xs, INV_SQRT_2PI), gauss)));
    },
  };
});

/** The same on a backend's fused kernels: one pass each way, and only x is kept for backprop. */
const geluErfFused = customOp(([x], save) => {
  save([x!]);
  return {
    value: runFusedKernel(FUSED_KERNEL.geluErf, { x: x! }),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => runFusedKernel(FUSED_KERNEL.geluErfGrad, { dy, x: saved[0]! }),
  };
});

function geluErf(x: tf.Tensor): tf.Tensor {
  return hasFusedKernel(FUSED_KERNEL.geluErf) && x.dtype === 'float32' ? geluErfFused(x) : geluErfOps(x);
}

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
