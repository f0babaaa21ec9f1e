import type * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';

export interface NamedWeight {
  /** `<layer name>/<weight name>`, e.g. `Transformer-3-FeedForward/output/kernel`; independent of how many models the process built. */
  readonly name: string;
  readonly variable: tf.Variable;
  readonly shape: readonly number[];
}

/**
 * The trainable weights in one stable order (graph order, then each layer's own order),
 * with stable names: the order every gradient list, flat buffer and optimizer slot uses.
 */
export function trainableWeights(model: tfl.LayersModel): NamedWeight[] {
  const seen = new Set<tf.Variable>();
  const out: NamedWeight[] = [];
  for (const w of model.trainableWeights) {
    const variable = w.read() as tf.Variable;
    if (seen.has(variable)) continue;
    seen.add(variable);
    out.push({ name: w.originalName, variable, shape: w.shape.map((d) => d ?? 0) });
  }
  const names = new Set(out.map((w) => w.name));
  if (names.size !== out.length) throw new Error(`model ${model.name} has two weights with the same name`);
  return out;
}
