/**
 * Reverse-mode gradients like tf.engine().gradients(), but freeing memory as it goes.
 *
 * tfjs-core 4.22 keeps every tensor the forward pass saved and every intermediate
 * gradient until the whole backward pass ends, so the backward peak is about the saved
 * activations plus a gradient for each of them. Here each node's saved tensors and its
 * output gradients are disposed as soon as that node has been differentiated: the
 * gradient of a tensor is complete (and needed by nobody else) once the node that
 * produced it is processed, because the tape is walked in reverse.
 *
 * This reads the engine's tape (state.activeTape, tape nodes' inputs/outputs/saved/gradient):
 * internals of @tensorflow/tfjs-core, whose version is pinned exactly for that reason and
 * covered by tests comparing against tf.grads.
 */
import * as tf from '@tensorflow/tfjs-core';
import { addRowsInPlace, readTensorView } from '../backend/variable-storage.js';

interface TapeNode {
  id: number;
  kernelName: string;
  inputs: Record<string, tf.Tensor>;
  outputs: tf.Tensor[];
  saved?: tf.Tensor[];
  gradient?: (dys: Array<tf.Tensor | null>) => Record<string, () => tf.Tensor>;
}

interface EngineInternals {
  state: { activeTape: TapeNode[] | null; gradientDepth: number };
  startTape(): void;
  endTape(): void;
  scopedRun<T>(start: () => void, end: () => void, f: () => T): T;
  tidy<T extends tf.TensorContainer>(name: string, f: () => T): T;
}

function engine(): EngineInternals {
  return tf.engine() as unknown as EngineInternals;
}

/** The nodes on a path from some x to y, each with only the inputs on such a path. */
function pathsFromXsToY(tape: TapeNode[], xs: tf.Tensor[], y: tf.Tensor): TapeNode[] {
  const fromX = new Set(xs.map((x) => x.id));
  const nodeFromX = new Set<number>();
  for (const node of tape) {
    if (Object.values(node.inputs).some((t) => fromX.has(t.id))) {
      nodeFromX.add(node.id);
      for (const out of node.outputs) fromX.add(out.id);
    }
  }
  const toY = new Set([y.id]);
  const nodeToY = new Set<number>();
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i]!;
    if (node.outputs.some((o) => toY.has(o.id))) {
      nodeToY.add(node.id);
      for (const input of Object.values(node.inputs)) toY.add(input.id);
    }
  }
  const out: TapeNode[] = [];
  for (const node of tape) {
    if (!nodeFromX.has(node.id) || !nodeToY.has(node.id)) continue;
    const inputs: Record<string, tf.Tensor> = {};
    for (const [name, t] of Object.entries(node.inputs)) if (fromX.has(t.id) && toY.has(t.id)) inputs[name] = t;
    out.push({ ...node, inputs });
  }
  return out;
}

/**
 * A row gather (an embedding lookup: table [V, D], indices [n], output [n, D]) whose table
 * has a gradient already (the tied output projection's, differentiated first): the output
 * gradient's rows are added into it in place (addRowsInPlace) instead of tfjs's dense [V, D]
 * gradient of the gather and a new tensor for the sum, two passes over the table's size
 * per call. Returns whether it did; otherwise the gather is differentiated as any node.
 */
function accumulatedGather(node: TapeNode, dys: Array<tf.Tensor | null>, gradOf: Map<number, tf.Tensor>): boolean {
  if (node.kernelName !== 'GatherV2' || dys.length !== 1 || !dys[0]) return false;
  const table = node.inputs['x'];
  // GatherV2's gradient saves [x, indices]
  const indices = node.saved?.[1];
  const previous = table && gradOf.get(table.id);
  const dy = dys[0];
  if (!table || !indices || !previous || table.rank !== 2 || indices.rank !== 1 || Object.keys(node.inputs).length !== 1) return false;
  const [rows, width] = table.shape as [number, number];
  const n = indices.size;
  // [n, D] is also what a gather along axis 1 would give when V = n = D: not ours to guess
  if (dy.rank !== 2 || dy.shape[0] !== n || dy.shape[1] !== width || (rows === n && width === n)) return false;
  const ids = indices.dataSync() as Int32Array;
  return addRowsInPlace(previous, ids, readTensorView(dy));
}

export interface LeanGradients {
  value: tf.Tensor;
  /** d value / d x for each x, in order; undefined where value does not depend on x. */
  grads: Array<tf.Tensor | undefined>;
}

/**
 * Gradients of f() with respect to xs, seeded with dy (default ones). Safe to call from a
 * custom gradient while an outer backward pass is running: the outer tape is restored.
 */
export function leanGradients(f: () => tf.Tensor, xs: tf.Tensor[], dy?: tf.Tensor): LeanGradients {
  const e = engine();
  const outerTape = e.state.activeTape;
  const outermost = e.state.gradientDepth === 0;
  try {
    const y = e.scopedRun(() => e.startTape(), () => e.endTape(), () => e.tidy('forward', f));
    const tape = e.state.activeTape ?? [];
    const nodes = pathsFromXsToY(tape, xs, y);
    if (outermost) {
      // what nodes off every x-to-y path saved (an argmax for a metric) is never read
      const onPath = new Set(nodes.map((n) => n.id));
      for (const node of tape) {
        if (onPath.has(node.id)) continue;
        for (const t of node.saved ?? []) t.dispose();
        if (node.saved) node.saved.length = 0;
      }
    }
    const keepIds = new Set(xs.map((x) => x.id));
    const result = e.tidy('backward', () => {
      const seed = dy ?? tf.onesLike(y);
      const gradOf = new Map<number, tf.Tensor>([[y.id, seed]]);
      const held = new Set<tf.Tensor>([seed]);
      for (let i = nodes.length - 1; i >= 0; i--) {
        const node = nodes[i]!;
        if (!node.gradient) throw new Error(`Cannot compute gradient: gradient function not found for ${node.kernelName}.`);
        const dys = node.outputs.map((o) => gradOf.get(o.id) ?? null);
        const names = accumulatedGather(node, dys, gradOf) ? [] : Object.keys(node.inputs);
        // custom gradients compute eagerly inside node.gradient(): one scope for both, so
        // their intermediates go as soon as the input gradients exist
        const dxs = names.length === 0 ? [] : e.tidy('grad', () => {
          const inputGrads = node.gradient!(dys);
          return names.map((name) => {
            const thunk = inputGrads[name];
            if (!thunk) throw new Error(`Cannot backprop through input ${name} of ${node.kernelName}.`);
            return thunk();
          });
        });
        for (let k = 0; k < names.length; k++) {
          const name = names[k]!;
          const x = node.inputs[name]!;
          let dx = dxs[k]!;
          // gradient functions may hand back dy itself, or one tensor for two inputs;
          // each entry must own its tensor since entries are disposed independently
          if (held.has(dx) || dys.includes(dx) || dxs.indexOf(dx) !== k) dx = tf.clone(dx);
          if (!tf.util.arraysEqual(dx.shape, x.shape)) {
            throw new Error(`gradient of ${node.kernelName} input ${name} has shape [${dx.shape}], the input has [${x.shape}]`);
          }
          const previous = gradOf.get(x.id);
          if (previous) {
            const sum = tf.add(previous, dx);
            held.delete(previous);
            previous.dispose();
            dx.dispose();
            dx = sum;
          }
          gradOf.set(x.id, dx);
          held.add(dx);
        }
        // this node was the last reader of its output gradients and of what it saved
        for (const o of node.outputs) {
          const g = gradOf.get(o.id);
          if (g && !keepIds.has(o.id)) {
            gradOf.delete(o.id);
            held.delete(g);
            if (g !== dy) g.dispose();
          }
        }
        for (const t of node.saved ?? []) t.dispose();
        if (node.saved) node.saved.length = 0;
      }
      // tidy walks containers and skips null: the missing gradients come back as null
      return xs.map((x) => gradOf.get(x.id) ?? null) as unknown as tf.Tensor[];
    });
    if (outermost) for (const node of tape) for (const t of node.saved ?? []) t.dispose();
    return { value: y, grads: result.map((g) => g ?? undefined) };
  } finally {
    e.state.activeTape = outerTape;
  }
}
