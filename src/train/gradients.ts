import * as tf from '@tensorflow/tfjs-core';

/** The L2 norm of all gradients together. */
export function globalNorm(grads: tf.Tensor[]): number {
  if (grads.length === 0) return 0;
  const normTensor = tf.tidy(() => tf.sqrt(tf.addN(grads.map((g) => tf.sum(tf.square(g))))));
  const norm = normTensor.dataSync()[0]!;
  normTensor.dispose();
  return norm;
}

/** Scales all gradients by min(1, maxNorm / globalNorm); returns new tensors and the norm before clipping. */
export function clipByGlobalNorm(grads: tf.Tensor[], maxNorm: number): { grads: tf.Tensor[]; norm: number } {
  const norm = globalNorm(grads);
  const scale = norm > maxNorm && norm > 0 ? maxNorm / norm : 1;
  return { grads: grads.map((g) => tf.mul(g, scale)), norm };
}

/** All gradients in one Float32Array, in the given order: what the all-reduce moves. */
export function flattenTensors(tensors: tf.Tensor[]): Float32Array {
  const total = tensors.reduce((n, t) => n + t.size, 0);
  const flat = new Float32Array(total);
  let offset = 0;
  for (const t of tensors) {
    flat.set(t.dataSync() as Float32Array, offset);
    offset += t.size;
  }
  return flat;
}

export function unflattenTensors(flat: Float32Array, shapes: readonly (readonly number[])[]): tf.Tensor[] {
  const total = shapes.reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0);
  if (total !== flat.length) throw new Error(`flat buffer has ${flat.length} values, the shapes need ${total}`);
  let offset = 0;
  return shapes.map((shape) => {
    const size = shape.reduce((a, b) => a * b, 1);
    const t = tf.tensor(flat.subarray(offset, offset + size), [...shape], 'float32');
    offset += size;
    return t;
  });
}
