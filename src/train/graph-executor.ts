import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import type { CallKwargs } from '../model/layers/index.js';

type Layer = tfl.layers.Layer;
type GraphNode = tfl.LayersModel['nodesByDepth'][string][number];

export interface RunOptions {
  training: boolean;
  /** Seed of every dropout mask in this call; a recomputed block replays it. */
  dropoutSeed?: number;
  /** Keep only block inputs in the forward pass and recompute each block in the backward pass. */
  recompute?: boolean;
}

interface NodeStep {
  readonly kind: 'node';
  readonly node: GraphNode;
}

/** A Transformer block's nodes, run as one unit so it can be recomputed in the backward pass. */
interface BlockStep {
  readonly kind: 'block';
  readonly name: string;
  readonly nodes: GraphNode[];
  readonly inputIds: number[];
  readonly outputId: number;
  readonly variables: tf.Variable[];
}

type Step = NodeStep | BlockStep;

const BLOCK_NAME = /^(Transformer-\d+)-/;

interface EngineWithTape {
  state: { activeTape: unknown };
  gradients(f: () => tf.Tensor, xs: tf.Tensor[], dy?: tf.Tensor, allowNoGradients?: boolean): { value: tf.Tensor; grads: tf.Tensor[] };
}

function engine(): EngineWithTape {
  return tf.engine() as unknown as EngineWithTape;
}

function callNode(node: GraphNode, inputs: tf.Tensor[], kwargs: CallKwargs): tf.Tensor {
  const layer: Layer = node.outboundLayer;
  const args = { ...(node.callArgs ?? {}), ...kwargs };
  const out = layer.call(inputs.length === 1 ? inputs[0]! : inputs, args);
  if (Array.isArray(out)) {
    if (out.length !== 1) throw new Error(`${layer.name}: layers with several outputs are not supported by the executor`);
    return out[0]!;
  }
  return out;
}

function runNodes(nodes: GraphNode[], values: Map<number, tf.Tensor>, kwargs: CallKwargs): void {
  for (const node of nodes) {
    const inputs = node.inputTensors.map((t) => {
      const v = values.get(t.id);
      if (!v) throw new Error(`${node.outboundLayer.name}: input ${t.name} was not computed`);
      return v;
    });
    values.set(node.outputTensors[0]!.id, callNode(node, inputs, kwargs));
  }
}

/**
 * Runs a functional LayersModel node by node, the way tfjs-layers' own executor does,
 * but with our call kwargs (training, dropout seed) and optional per-block recompute.
 * The model graph stays the single definition of the network; this only decides how
 * it is evaluated.
 */
export class GraphExecutor {
  private readonly plans = new Map<string, Step[]>();

  constructor(readonly model: tfl.LayersModel) {}

  /** Output of the named layers (their first node), computing only what they need. */
  run(feeds: tf.Tensor[], outputLayers: string[], options: RunOptions): tf.Tensor[] {
    const { model } = this;
    if (feeds.length !== model.inputs.length) {
      throw new Error(`model ${model.name} takes ${model.inputs.length} inputs, got ${feeds.length}`);
    }
    const targets = outputLayers.map((name) => model.getLayer(name).inboundNodes[0]!.outputTensors[0]!.id);
    const steps = this.plan(outputLayers, targets);
    const values = new Map<number, tf.Tensor>();
    model.inputs.forEach((input, i) => values.set(input.id, feeds[i]!));
    const kwargs: CallKwargs = { training: options.training, dropoutSeed: options.dropoutSeed };
    for (const step of steps) {
      if (step.kind === 'node') runNodes([step.node], values, kwargs);
      else if (options.recompute) values.set(step.outputId, this.runRecomputed(step, values, kwargs));
      else runNodes(step.nodes, values, kwargs);
    }
    return targets.map((id) => values.get(id)!);
  }

  private plan(outputLayers: string[], targets: number[]): Step[] {
    const key = outputLayers.join('\u0000');
    let steps = this.plans.get(key);
    if (!steps) {
      steps = buildPlan(this.model, targets);
      this.plans.set(key, steps);
    }
    return steps;
  }

  private runRecomputed(step: BlockStep, values: Map<number, tf.Tensor>, kwargs: CallKwargs): tf.Tensor {
    const forward = (inputs: tf.Tensor[]): tf.Tensor => {
      const local = new Map<number, tf.Tensor>();
      step.inputIds.forEach((id, i) => local.set(id, inputs[i]!));
      runNodes(step.nodes, local, kwargs);
      return local.get(step.outputId)!;
    };
    const inputCount = step.inputIds.length;
    const op = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
      const save = args[args.length - 1] as tf.GradSaveFunc;
      const inputs = args.slice(0, inputCount) as tf.Tensor[];
      save(inputs);
      return {
        value: forward(inputs),
        gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
          const e = engine();
          // engine.gradients() starts a fresh tape when no other is recording, which
          // would drop the outer backward pass's tape; keep it and put it back.
          const outerTape = e.state.activeTape;
          try {
            const xs = [...saved, ...step.variables];
            const { value, grads } = e.gradients(() => forward(saved), xs, dy as tf.Tensor, true);
            value.dispose();
            return grads.map((g, i) => g ?? tf.zerosLike(xs[i]!));
          } finally {
            e.state.activeTape = outerTape;
          }
        },
      };
    });
    const inputs = step.inputIds.map((id) => values.get(id)!);
    return op(...inputs, ...step.variables);
  }
}

function buildPlan(model: tfl.LayersModel, targets: number[]): Step[] {
  const depths = Object.keys(model.nodesByDepth)
    .map(Number)
    .sort((a, b) => b - a);
  const inputIds = new Set(model.inputs.map((t) => t.id));
  const ordered = depths.flatMap((d) => model.nodesByDepth[String(d)]!).filter((n) => !isInputNode(n, inputIds));

  // keep only the nodes the requested outputs depend on
  const producer = new Map<number, GraphNode>();
  for (const node of ordered) for (const t of node.outputTensors) producer.set(t.id, node);
  const needed = new Set<GraphNode>();
  const stack = [...targets];
  while (stack.length) {
    const node = producer.get(stack.pop()!);
    if (!node || needed.has(node)) continue;
    needed.add(node);
    for (const t of node.inputTensors) stack.push(t.id);
  }
  const nodes = ordered.filter((n) => needed.has(n));

  const consumers = new Map<number, GraphNode[]>();
  for (const node of nodes) {
    for (const t of node.inputTensors) consumers.set(t.id, [...(consumers.get(t.id) ?? []), node]);
  }

  const steps: Step[] = [];
  const seenBlocks = new Set<string>();
  for (let i = 0; i < nodes.length; ) {
    const block = BLOCK_NAME.exec(nodes[i]!.outboundLayer.name)?.[1];
    if (!block) {
      steps.push({ kind: 'node', node: nodes[i]! });
      i++;
      continue;
    }
    if (seenBlocks.has(block)) throw new Error(`the nodes of ${block} are not contiguous in the graph; cannot run it as a block`);
    seenBlocks.add(block);
    const members: GraphNode[] = [];
    while (i < nodes.length && BLOCK_NAME.exec(nodes[i]!.outboundLayer.name)?.[1] === block) members.push(nodes[i++]!);
    steps.push(blockStep(block, members, consumers, new Set(targets)));
  }
  return steps;
}

function isInputNode(node: GraphNode, inputIds: Set<number>): boolean {
  return node.inboundLayers.length === 0 && node.outputTensors.every((t) => inputIds.has(t.id));
}

function blockStep(name: string, nodes: GraphNode[], consumers: Map<number, GraphNode[]>, targets: Set<number>): BlockStep {
  const inside = new Set(nodes);
  const produced = new Set(nodes.flatMap((n) => n.outputTensors.map((t) => t.id)));
  const inputIds: number[] = [];
  for (const node of nodes) {
    for (const t of node.inputTensors) if (!produced.has(t.id) && !inputIds.includes(t.id)) inputIds.push(t.id);
  }
  const outputs = [...produced].filter(
    (id) => targets.has(id) || (consumers.get(id) ?? []).some((c) => !inside.has(c)),
  );
  if (outputs.length !== 1) throw new Error(`${name} must have exactly one output used outside it, found ${outputs.length}`);
  const variables: tf.Variable[] = [];
  for (const node of nodes) {
    for (const w of node.outboundLayer.trainableWeights) {
      const v = w.read() as tf.Variable;
      if (!variables.includes(v)) variables.push(v);
    }
  }
  return { kind: 'block', name, nodes, inputIds, outputId: outputs[0]!, variables };
}
