import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import type { DropsUnusedOutput, ValueFreeGradient } from '../model/layers/base.js';
import type { CallKwargs } from '../model/layers/index.js';
import { customOp } from '../model/layers/ops.js';
import { leanGradients } from './lean-gradients.js';

type Layer = tfl.layers.Layer;
type GraphNode = tfl.LayersModel['nodesByDepth'][string][number];

export interface RunOptions {
  training: boolean;
  /** Seed of every dropout mask in this call; a recomputed block replays it. */
  dropoutSeed?: number;
  /** Index of the fed batch's first sample in the whole batch: dropout masks are keyed by sample (CallKwargs.firstSample). */
  firstSample?: number;
  /** The length dropout counts sequence positions over (CallKwargs.maskLength). */
  maskLength?: number;
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
  /** Readers of each value among the block's own nodes. */
  readonly readers: Map<number, number>;
  /** How the backward pass splits the block, when its last node has one input from inside it. */
  readonly split: BlockSplit | undefined;
}

/**
 * The block as body + tail, the tail being its last node (a post-LN block's final norm).
 * The forward pass also keeps the tail's input; the backward pass differentiates the
 * tail from it, then recomputes the body without the values that only fed that input.
 */
interface BlockSplit {
  readonly body: GraphNode[];
  readonly tail: GraphNode;
  /** The tail's input: the body's output. */
  readonly tailInputId: number;
  readonly bodyValueUnused: Set<GraphNode>;
  readonly tailVariables: tf.Variable[];
  /** The block's other variables, in the block's order. */
  readonly bodyVariables: tf.Variable[];
}

type Step = NodeStep | BlockStep;

const BLOCK_NAME = /^(Transformer-\d+)-/;

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

/**
 * Tensors by symbolic id, freed after their last reader. tfjs frees nothing inside a
 * scope, so otherwise every intermediate of the forward pass would stay alive until it
 * ends; what backprop needs survives, because the tape holds its own references. A layer
 * may return its input unchanged (dropout off), so a tensor is disposed only when no id
 * maps to it any more.
 */
class Values {
  private readonly byId = new Map<number, tf.Tensor>();
  private readonly readers = new Map<number, number>();
  private readonly holders = new Map<tf.Tensor, number>();

  constructor(private readonly pinned: ReadonlySet<number>) {}

  set(id: number, tensor: tf.Tensor, readers: number): void {
    this.byId.set(id, tensor);
    this.readers.set(id, readers);
    this.holders.set(tensor, (this.holders.get(tensor) ?? 0) + 1);
  }

  get(id: number, reader: string): tf.Tensor {
    const v = this.byId.get(id);
    if (!v) throw new Error(`${reader}: an input was not computed`);
    return v;
  }

  /** One reader of `id` is done with it. */
  release(id: number): void {
    const left = (this.readers.get(id) ?? 0) - 1;
    this.readers.set(id, left);
    if (left > 0 || this.pinned.has(id)) return;
    const tensor = this.byId.get(id);
    if (!tensor) return;
    this.byId.delete(id);
    const holders = this.holders.get(tensor)! - 1;
    if (holders > 0) this.holders.set(tensor, holders);
    else {
      this.holders.delete(tensor);
      tensor.dispose();
    }
  }
}

function countReaders(nodes: readonly GraphNode[]): Map<number, number> {
  const readers = new Map<number, number>();
  for (const node of nodes) for (const t of node.inputTensors) readers.set(t.id, (readers.get(t.id) ?? 0) + 1);
  return readers;
}

/** Runs nodes in order, each call in its own tidy scope; `valueUnused` nodes are told their value is not needed. */
function runNodes(nodes: readonly GraphNode[], values: Values, readers: ReadonlyMap<number, number>, kwargs: CallKwargs,
    valueUnused: ReadonlySet<GraphNode> = new Set()): void {
  const gradientOnly: CallKwargs = { ...kwargs, outputValueUnused: true };
  for (const node of nodes) {
    const inputs = node.inputTensors.map((t) => values.get(t.id, node.outboundLayer.name));
    const id = node.outputTensors[0]!.id;
    const nodeKwargs = valueUnused.has(node) ? gradientOnly : kwargs;
    values.set(id, tf.tidy(() => callNode(node, inputs, nodeKwargs)), readers.get(id) ?? 0);
    for (const t of node.inputTensors) values.release(t.id);
  }
}

function ignoresInputValues(layer: Layer): boolean {
  return (layer as Partial<ValueFreeGradient>).gradientIgnoresInputValues === true;
}

function dropsUnusedOutput(layer: Layer): boolean {
  return (layer as Partial<DropsUnusedOutput>).dropsUnusedOutput === true;
}

/**
 * The nodes among `nodes` whose value reaches nothing but `outputId`, and only through
 * layers whose gradient ignores input values: when only gradients are wanted, nothing
 * needs these values.
 */
function nodesWithUnusedValues(nodes: readonly GraphNode[], outputId: number, readers: ReadonlyMap<number, number>): Set<GraphNode> {
  const producer = new Map<number, GraphNode>();
  for (const node of nodes) producer.set(node.outputTensors[0]!.id, node);
  const unused = new Set<GraphNode>();
  const visit = (id: number): void => {
    const node = producer.get(id);
    if (!node) return;
    const layer = node.outboundLayer;
    if (ignoresInputValues(layer)) {
      unused.add(node);
      for (const t of node.inputTensors) if (readers.get(t.id) === 1) visit(t.id);
    } else if (dropsUnusedOutput(layer)) {
      unused.add(node);
    }
  };
  visit(outputId);
  return unused;
}

/**
 * Runs a functional LayersModel node by node, the way tfjs-layers' own executor does,
 * but with our call kwargs (training, dropout seed) and optional per-block recompute.
 * The model graph stays the single definition of the network; this only decides how
 * it is evaluated.
 */
interface Plan {
  steps: Step[];
  /** Consumer nodes of every value in the plan. */
  readers: Map<number, number>;
  /**
   * Never recomputed: its backward pass comes first, right after its forward pass, so
   * recomputing it would rebuild the very activations that are still at hand.
   */
  lastBlock: BlockStep | undefined;
}

export class GraphExecutor {
  private readonly plans = new Map<string, Plan>();

  constructor(readonly model: tfl.LayersModel) {}

  /** Output of the named layers (their first node), computing only what they need. */
  run(feeds: tf.Tensor[], outputLayers: string[], options: RunOptions): tf.Tensor[] {
    const { model } = this;
    if (feeds.length !== model.inputs.length) {
      throw new Error(`model ${model.name} takes ${model.inputs.length} inputs, got ${feeds.length}`);
    }
    const targets = outputLayers.map((name) => model.getLayer(name).inboundNodes[0]!.outputTensors[0]!.id);
    const { steps, readers, lastBlock } = this.plan(outputLayers, targets);
    const values = new Values(new Set([...model.inputs.map((t) => t.id), ...targets]));
    model.inputs.forEach((input, i) => values.set(input.id, feeds[i]!, readers.get(input.id) ?? 0));
    const kwargs: CallKwargs = { training: options.training, dropoutSeed: options.dropoutSeed, firstSample: options.firstSample, maskLength: options.maskLength };
    for (const step of steps) {
      if (step.kind === 'node') runNodes([step.node], values, readers, kwargs);
      else if (!options.recompute || step === lastBlock) runNodes(step.nodes, values, readers, kwargs);
      else {
        const inputs = step.inputIds.map((id) => values.get(id, step.name));
        values.set(step.outputId, this.runRecomputed(step, inputs, kwargs), readers.get(step.outputId) ?? 0);
        for (const id of step.inputIds) for (let n = step.readers.get(id) ?? 0; n > 0; n--) values.release(id);
      }
    }
    return targets.map((id) => values.get(id, model.name));
  }

  private plan(outputLayers: string[], targets: number[]): Plan {
    const key = outputLayers.join('\u0000');
    let plan = this.plans.get(key);
    if (!plan) {
      const steps = buildPlan(this.model, targets);
      plan = {
        steps,
        readers: countReaders(steps.flatMap((s) => (s.kind === 'node' ? [s.node] : s.nodes))),
        lastBlock: steps.filter((s): s is BlockStep => s.kind === 'block').at(-1),
      };
      this.plans.set(key, plan);
    }
    return plan;
  }

  /**
   * The block as one op whose forward keeps only its inputs (and its tail's input), and
   * whose backward runs the block again under its own tape. Dropout masks are a function
   * of the call's seed, so the second run sees the same masks as the first.
   */
  private runRecomputed(step: BlockStep, inputs: tf.Tensor[], kwargs: CallKwargs): tf.Tensor {
    const { split } = step;
    const inputCount = step.inputIds.length;
    const run = (nodes: GraphNode[], blockInputs: tf.Tensor[], outputId: number, keep: number[],
        valueUnused?: Set<GraphNode>): Map<number, tf.Tensor> => {
      const local = new Values(new Set([...step.inputIds, outputId, ...keep]));
      step.inputIds.forEach((id, i) => local.set(id, blockInputs[i]!, step.readers.get(id) ?? 0));
      runNodes(nodes, local, step.readers, kwargs, valueUnused);
      return new Map([outputId, ...keep].map((id) => [id, local.get(id, step.name)]));
    };
    return customOp((args, save) => {
      const blockInputs = args.slice(0, inputCount);
      const kept = split ? [split.tailInputId] : [];
      const values = run(step.nodes, blockInputs, step.outputId, kept);
      save([...blockInputs, ...kept.map((id) => values.get(id)!)]);
      return {
        value: values.get(step.outputId)!,
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const savedInputs = saved.slice(0, inputCount);
          if (!split) {
            // a fresh tape for the block; leanGradients puts the outer backward pass's tape back
            const xs = [...savedInputs, ...step.variables];
            const { value, grads } = leanGradients(() => run(step.nodes, savedInputs, step.outputId, []).get(step.outputId)!, xs, dy);
            if (!savedInputs.includes(value)) value.dispose();
            return grads.map((g, i) => g ?? tf.zerosLike(xs[i]!));
          }
          const tailInput = saved[inputCount]!;
          const tailXs = [tailInput, ...split.tailVariables];
          const tail = leanGradients(() => callNode(split.tail, [tailInput], kwargs), tailXs, dy);
          // a layer may hand back its input (dropout off), and a gradient may be the seed itself:
          // dispose only what this function made
          if (tail.value !== tailInput) tail.value.dispose();
          const dTailInput = tail.grads[0] ?? tf.zerosLike(tailInput);
          const { bodyVariables } = split;
          const bodyXs = [...savedInputs, ...bodyVariables];
          const body = leanGradients(
            () => run(split.body, savedInputs, split.tailInputId, [], split.bodyValueUnused).get(split.tailInputId)!,
            bodyXs, dTailInput);
          if (!savedInputs.includes(body.value)) body.value.dispose();
          if (dTailInput !== dy && !body.grads.includes(dTailInput)) dTailInput.dispose();
          const byVariable = new Map<tf.Variable, tf.Tensor>();
          bodyVariables.forEach((v, i) => { const g = body.grads[inputCount + i]; if (g) byVariable.set(v, g); });
          split.tailVariables.forEach((v, i) => { const g = tail.grads[1 + i]; if (g) byVariable.set(v, g); });
          return [
            ...savedInputs.map((x, i) => body.grads[i] ?? tf.zerosLike(x)),
            ...step.variables.map((v) => byVariable.get(v) ?? tf.zerosLike(v)),
          ];
        },
      };
    })(...inputs, ...step.variables);
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
  const readers = countReaders(nodes);
  return { kind: 'block', name, nodes, inputIds, outputId: outputs[0]!, variables, readers, split: splitBlock(nodes, readers, variables) };
}

function splitBlock(nodes: GraphNode[], readers: ReadonlyMap<number, number>, variables: tf.Variable[]): BlockSplit | undefined {
  const tail = nodes.at(-1);
  const body = nodes.slice(0, -1);
  if (!tail || tail.inputTensors.length !== 1 || body.length === 0) return undefined;
  const tailInputId = tail.inputTensors[0]!.id;
  if (!body.some((n) => n.outputTensors[0]!.id === tailInputId)) return undefined;
  const tailVariables = tail.outboundLayer.trainableWeights.map((w) => w.read() as tf.Variable);
  // a weight shared between tail and body would need its two gradients summed
  const bodyWeights = new Set(body.flatMap((n) => n.outboundLayer.trainableWeights.map((w) => w.read())));
  if (tailVariables.some((v) => bodyWeights.has(v))) return undefined;
  const bodyVariables = variables.filter((v) => !tailVariables.includes(v));
  return { body, tail, tailInputId, tailVariables, bodyVariables, bodyValueUnused: nodesWithUnusedValues(body, tailInputId, readers) };
}
