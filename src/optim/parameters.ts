import * as tf from '@tensorflow/tfjs-core';
import { readTensorCopy, readTensorView, tensorCreationCopies } from '../backend/variable-storage.js';
import type { NamedWeight } from '../model/weights.js';

/**
 * Where an optimizer reads and writes parameter values, one parameter at a time: host
 * arrays (tests, a worker's flat buffers) or tfjs variables. The optimizer never holds
 * more than one parameter's values at once, so the update needs host memory for the
 * largest parameter only, not for the model.
 */
export interface ParameterAccess {
  readonly names: readonly string[];
  shape(index: number): readonly number[];
  /**
   * The current values, as an array the optimizer may modify and hand back to `write`;
   * valid until the next `read` (implementations may reuse it), so keep a copy. `into`: an
   * array of the parameter's size to copy them into, which an implementation that copies
   * anyway uses (the optimizer's workspace); one that holds the values on the host returns
   * its own array.
   */
  read(index: number, into?: Float32Array): Float32Array;
  /** Values [from, to) of the flattened parameter, copied into `into` (to - from long): a sharded update reads its rows only. */
  readRange(index: number, from: number, to: number, into: Float32Array): void;
  /** Stores new values; `values` is the caller's from then on (implementations copy it if they keep it). */
  write(index: number, values: Float32Array): void;
}

export function sizeOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Parameters held in plain Float32Arrays, updated in place. */
export class HostParameters implements ParameterAccess {
  readonly names: readonly string[];
  private readonly shapes: (readonly number[])[];

  constructor(readonly params: readonly { name: string; shape: readonly number[]; values: Float32Array }[]) {
    this.names = params.map((p) => p.name);
    this.shapes = params.map((p) => [...p.shape]);
    for (const p of params) {
      if (p.values.length !== sizeOf(p.shape)) throw new Error(`parameter ${p.name}: ${p.values.length} values for shape [${p.shape.join(', ')}]`);
    }
    if (new Set(this.names).size !== this.names.length) throw new Error('two parameters have the same name');
  }

  shape(index: number): readonly number[] {
    return this.shapes[index]!;
  }

  read(index: number): Float32Array {
    return this.params[index]!.values;
  }

  readRange(index: number, from: number, to: number, into: Float32Array): void {
    into.set(this.params[index]!.values.subarray(from, to));
  }

  write(index: number, values: Float32Array): void {
    const target = this.params[index]!.values;
    if (values !== target) target.set(values);
  }
}

/** A model's trainable variables (see `trainableWeights`): read with dataSync, written with assign. */
export class VariableParameters implements ParameterAccess {
  readonly names: readonly string[];
  /** Reused by every read: the largest weight's size. */
  private buffer = new Float32Array(0);

  constructor(readonly weights: readonly NamedWeight[]) {
    this.names = weights.map((w) => w.name);
  }

  shape(index: number): readonly number[] {
    return this.weights[index]!.shape;
  }

  read(index: number, into?: Float32Array): Float32Array {
    const variable = this.weights[index]!.variable;
    if (into) return readTensorCopy(variable, into);
    if (this.buffer.length < variable.size) this.buffer = new Float32Array(variable.size);
    return readTensorCopy(variable, this.buffer.subarray(0, variable.size));
  }

  readRange(index: number, from: number, to: number, into: Float32Array): void {
    into.set(readTensorView(this.weights[index]!.variable).subarray(from, to));
  }

  write(index: number, values: Float32Array): void {
    const weight = this.weights[index]!;
    // the cpu backend keeps the array it is given, and `values` may be a reused buffer
    const fresh = tf.tensor(tensorCreationCopies() ? values : values.slice(), [...weight.shape], 'float32');
    weight.variable.assign(fresh);
    fresh.dispose();
  }
}
