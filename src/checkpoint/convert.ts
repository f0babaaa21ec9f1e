/**
 * Moving a model between our tfjs LayersModel, Google BERT's TensorFlow checkpoints and
 * Hugging Face safetensors, by the table in name-map.ts. Every import checks each weight's
 * shape against the config and names what is missing, unexpected or of another shape.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Application } from '../model/build.js';
import type { BertConfig } from '../model/config.js';
import { writeFileAtomically } from './atomic-write.js';
import { canonicalHfName, expandNameMap, knownExtra, type MappedWeight, type Naming, shapeIn, TF_OPTIMIZER_VARIABLE } from './name-map.js';
import {
  ConvertError,
  firstExisting,
  isDirectory,
  type LayersModelFolder,
  openLayersModelFolder,
  openSafetensorsSource,
  openTfCheckpointSource,
  readModelConfig,
  type WeightSource,
} from './model-sources.js';
import { type Float32Tensor, writeSafetensors } from './safetensors.js';

export { ConvertError, type WeightSource } from './model-sources.js';

/** Our LayerNorm epsilon (src/model/layers/layer-norm.ts), Google BERT's. */
export const LAYER_NORM_EPSILON = 1e-12;

export interface ImportResult {
  /** Our weights, named ours, in `trainableWeights` order. */
  readonly weights: Float32Tensor[];
  /** Known variables that were skipped (pooler, NSP head, tied copies), one line each. */
  readonly notes: string[];
  /** TF optimizer slots and counters skipped (adam_m, adam_v, global_step...). */
  readonly optimizerVariables: number;
}

const shapeText = (s: readonly number[]) => `[${s.join(', ')}]`;
const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c]!;
  return out;
}

/** A list in a message: the first few, and how many more. */
function listed(items: readonly string[], most = 8): string {
  return items.length <= most ? items.join(', ') : `${items.slice(0, most).join(', ')} and ${items.length - most} more`;
}

/**
 * Reads every weight of our model for `config` from a source named in `naming`, checking
 * each shape against the config; HF tensors are transposed where the layouts differ. Throws
 * one ConvertError naming every missing, unexpected and mis-shaped variable.
 */
export async function importWeights(source: WeightSource, naming: Naming, config: BertConfig): Promise<ImportResult> {
  const expected = expandNameMap(config);
  const present = new Map<string, (typeof source.variables)[number]>();
  for (const v of source.variables) {
    const key = naming === 'hf' ? canonicalHfName(v.name) : v.name;
    present.set(key, v);
  }
  // an HF checkpoint with only the decoder's copy of the MLM bias
  if (naming === 'hf' && !present.has('cls.predictions.bias') && present.has('cls.predictions.decoder.bias')) {
    present.set('cls.predictions.bias', present.get('cls.predictions.decoder.bias')!);
    present.delete('cls.predictions.decoder.bias');
  }
  const missing: string[] = [];
  const misShaped: string[] = [];
  const used = new Set<string>();
  for (const w of expected) {
    const v = present.get(w[naming]);
    if (!v) {
      missing.push(w[naming]);
      continue;
    }
    used.add(w[naming]);
    const want = shapeIn(w, naming);
    if (!sameShape(v.shape, want)) {
      const dims = (naming === 'hf' && w.transform === 'transpose' ? [...w.dims].reverse() : w.dims).join(', ');
      misShaped.push(`${v.name} is ${shapeText(v.shape)} in ${source.description}, the config wants ${shapeText(want)} (${dims})`);
    } else if (!/^(float32|F32|F16|BF16|F64|DT_FLOAT|DT_HALF|DT_BFLOAT16|DT_DOUBLE|float16|bfloat16|float64|half|double)$/i.test(v.dtype)) {
      misShaped.push(`${v.name} is ${v.dtype}, not a floating-point weight`);
    }
  }
  const notes: string[] = [];
  const unexpected: string[] = [];
  let optimizerVariables = 0;
  const skipped = new Map<string, string[]>();
  const tied: { name: string; tiedTo: string }[] = [];
  for (const [key, v] of present) {
    if (used.has(key)) continue;
    if (naming === 'tf' && TF_OPTIMIZER_VARIABLE.test(key)) {
      optimizerVariables++;
      continue;
    }
    const extra = knownExtra(naming, key);
    if (!extra) {
      unexpected.push(v.name);
      continue;
    }
    if (extra.action === 'tied' && extra.tiedTo !== undefined) tied.push({ name: v.name, tiedTo: extra.tiedTo });
    const names = skipped.get(extra.note) ?? [];
    names.push(v.name);
    skipped.set(extra.note, names);
  }
  if (missing.length > 0 || unexpected.length > 0 || misShaped.length > 0) {
    const parts: string[] = [];
    if (misShaped.length > 0) parts.push(`shapes that disagree with the config: ${listed(misShaped, 4)}`);
    if (missing.length > 0) parts.push(`missing ${missing.length} variable(s) the config needs: ${listed(missing)}`);
    if (unexpected.length > 0) parts.push(`${unexpected.length} unexpected variable(s) (not in the ${naming === 'tf' ? 'Google BERT' : naming === 'hf' ? 'Hugging Face BERT' : 'model\'s'} naming, or more layers than the config has): ${listed(unexpected)}`);
    throw new ConvertError(`${source.description} does not match the model config (${config.num_hidden_layers} layers, hidden ${config.hidden_size}, vocab ${config.vocab_size}):\n  ${parts.join('\n  ')}`);
  }
  for (const [note, names] of skipped) notes.push(`skipped ${names.join(', ')}: ${note}`);
  const weights: Float32Tensor[] = [];
  const byHf = new Map<string, Float32Array>();
  for (const w of expected) {
    const v = present.get(w[naming])!;
    const raw = await source.read(v.name);
    if (!(raw instanceof Float32Array)) throw new ConvertError(`${v.name} in ${source.description} holds integers, not weights`);
    const count = w.shape.reduce((a, b) => a * b, 1);
    if (raw.length !== count) throw new ConvertError(`${v.name} in ${source.description} has ${raw.length} values for the shape ${shapeText(v.shape)}`);
    const data = naming === 'hf' && w.transform === 'transpose' ? transpose2d(raw, w.shape[1]!, w.shape[0]!) : raw;
    weights.push({ name: w.ours, shape: [...w.shape], data });
    byHf.set(w.hf, data);
  }
  // a tied copy that differs is worth saying: ours keeps one tensor
  for (const t of tied) {
    const ours = byHf.get(t.tiedTo);
    if (!ours) continue;
    const copy = await source.read(t.name);
    if (copy.length !== ours.length || copy.some((x, i) => x !== ours[i])) notes.push(`warning: ${t.name} differs from ${t.tiedTo}; the model ties them, ${t.tiedTo} is used`);
  }
  return { weights, notes, optimizerVariables };
}

/**
 * Our weights under another naming (and layout), checked against the config first; for HF
 * without the tied copies (`from_pretrained` ties them again, as `save_pretrained` omits them).
 */
export function exportWeights(weights: readonly Float32Tensor[], naming: Naming, config: BertConfig): Float32Tensor[] {
  const expected = expandNameMap(config);
  const byName = new Map(weights.map((w) => [w.name, w]));
  const missing = expected.filter((e) => !byName.has(e.ours)).map((e) => e.ours);
  const known = new Set(expected.map((e) => e.ours));
  const unexpected = weights.filter((w) => !known.has(w.name)).map((w) => w.name);
  const misShaped = expected.filter((e) => byName.has(e.ours) && !sameShape(byName.get(e.ours)!.shape, e.shape)).map((e) => `${e.ours} is ${shapeText(byName.get(e.ours)!.shape)}, the config wants ${shapeText(e.shape)} (${e.dims.join(', ')})`);
  if (missing.length > 0 || unexpected.length > 0 || misShaped.length > 0) {
    const parts = [
      misShaped.length > 0 ? `shapes that disagree with the config: ${listed(misShaped, 4)}` : '',
      missing.length > 0 ? `missing: ${listed(missing)}` : '',
      unexpected.length > 0 ? `unexpected: ${listed(unexpected)}` : '',
    ].filter((p) => p !== '');
    throw new ConvertError(`the weights do not match the model config:\n  ${parts.join('\n  ')}`);
  }
  return expected.map((e: MappedWeight) => {
    const w = byName.get(e.ours)!;
    const data = naming === 'hf' && e.transform === 'transpose' ? transpose2d(w.data, e.shape[0]!, e.shape[1]!) : w.data;
    return { name: e[naming], shape: [...shapeIn(e, naming)], data };
  });
}

/** Hugging Face's config.json for `BertForMaskedLM.from_pretrained`. */
export function huggingFaceConfig(config: BertConfig): Record<string, unknown> {
  return {
    architectures: ['BertForMaskedLM'],
    model_type: 'bert',
    vocab_size: config.vocab_size,
    hidden_size: config.hidden_size,
    num_hidden_layers: config.num_hidden_layers,
    num_attention_heads: config.num_attention_heads,
    intermediate_size: config.intermediate_size,
    hidden_act: config.hidden_act,
    hidden_dropout_prob: config.hidden_dropout_prob,
    attention_probs_dropout_prob: config.attention_probs_dropout_prob,
    max_position_embeddings: config.max_position_embeddings,
    type_vocab_size: config.type_vocab_size,
    initializer_range: config.initializer_range,
    layer_norm_eps: LAYER_NORM_EPSILON,
    pad_token_id: 0,
    position_embedding_type: 'absolute',
    tie_word_embeddings: true,
    torch_dtype: 'float32',
  };
}

/** Our bert_config.json: the fields parseBertConfig reads. */
export function bertConfigJson(config: BertConfig): Record<string, unknown> {
  const { vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act, max_position_embeddings, type_vocab_size, hidden_dropout_prob, attention_probs_dropout_prob, initializer_range } = config;
  return { vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act, max_position_embeddings, type_vocab_size, hidden_dropout_prob, attention_probs_dropout_prob, initializer_range };
}

// ---- whole conversions -------------------------------------------------------------------

export type ConvertFrom = 'tf-checkpoint' | 'safetensors' | 'tfjs';
export type ConvertTo = 'tfjs' | 'safetensors';
export const CONVERT_FROM: readonly ConvertFrom[] = ['tf-checkpoint', 'safetensors', 'tfjs'];
export const CONVERT_TO: readonly ConvertTo[] = ['tfjs', 'safetensors'];

export const SAFETENSORS_FILE = 'model.safetensors';
export const HF_CONFIG_FILE = 'config.json';
export const BERT_CONFIG_FILE = 'bert_config.json';

export interface LoadedModel {
  readonly config: BertConfig;
  readonly weights: Float32Tensor[];
  /** Where the config came from. */
  readonly configFile: string;
  /** Known from a tfjs model (its attention mask); else undefined. */
  readonly application?: Application;
  readonly notes: string[];
  readonly optimizerVariables: number;
}

/** The config: `--config`, else the first of the candidates beside the input. */
async function configFor(given: string | undefined, candidates: readonly string[], what: string): Promise<{ config: BertConfig; file: string }> {
  const file = given ?? (await firstExisting(candidates));
  if (file === undefined) throw new ConvertError(`no model config for ${what}: looked for ${candidates.join(', ')}; pass --config bert_config.json`);
  return { config: await readModelConfig(file), file };
}

/** Reads a model from any of the three formats as our weights, checked against its config. */
export async function loadForConversion(from: ConvertFrom, input: string, configFile?: string): Promise<LoadedModel> {
  if (from === 'tfjs') {
    if (!(await isDirectory(input))) throw new ConvertError(`${input} is not a folder: --from tfjs reads a LayersModel folder (model.json + weights.bin)`);
    const folder: LayersModelFolder = await openLayersModelFolder(input);
    const config = configFile === undefined ? folder.config : await readModelConfig(configFile);
    const imported = await importWeights(folder.source, 'ours', config);
    return { config, configFile: configFile ?? path.join(input, 'model.json'), application: folder.application, weights: imported.weights, notes: imported.notes, optimizerVariables: 0 };
  }
  if (from === 'safetensors') {
    const dir = (await isDirectory(input)) ? input : path.dirname(input);
    const file = (await isDirectory(input)) ? path.join(input, SAFETENSORS_FILE) : input;
    const { config, file: cfg } = await configFor(configFile, [path.join(dir, HF_CONFIG_FILE), path.join(dir, BERT_CONFIG_FILE)], file);
    const notes: string[] = [];
    if (configFile === undefined && path.basename(cfg) === HF_CONFIG_FILE) {
      const raw = JSON.parse(await fs.readFile(cfg, 'utf8')) as Record<string, unknown>;
      const eps = raw['layer_norm_eps'];
      if (typeof eps === 'number' && eps !== LAYER_NORM_EPSILON) notes.push(`warning: ${cfg} has layer_norm_eps ${eps}; our LayerNorm uses ${LAYER_NORM_EPSILON}, outputs may differ slightly`);
      if (raw['position_embedding_type'] !== undefined && raw['position_embedding_type'] !== 'absolute') throw new ConvertError(`${cfg}: position_embedding_type ${String(raw['position_embedding_type'])}; only absolute position embeddings are supported`);
    }
    const source = await openSafetensorsSource(file);
    try {
      const imported = await importWeights(source, 'hf', config);
      return { config, configFile: cfg, weights: imported.weights, notes: [...notes, ...imported.notes], optimizerVariables: 0 };
    } finally {
      await source.close?.();
    }
  }
  const dir = (await isDirectory(input)) ? input : path.dirname(input);
  const { config, file: cfg } = await configFor(configFile, [path.join(dir, BERT_CONFIG_FILE), path.join(dir, HF_CONFIG_FILE)], input);
  const { source } = await openTfCheckpointSource(input);
  try {
    const imported = await importWeights(source, 'tf', config);
    return { config, configFile: cfg, weights: imported.weights, notes: imported.notes, optimizerVariables: imported.optimizerVariables };
  } finally {
    await source.close?.();
  }
}

/** Refuses an out folder that is a file or holds a model already (unless `overwrite`), and makes it. */
export async function prepareOutDir(dir: string, files: readonly string[], overwrite: boolean): Promise<void> {
  const stat = await fs.stat(dir).catch(() => undefined);
  if (stat && !stat.isDirectory()) throw new ConvertError(`${dir} is a file; the output is a folder`);
  if (!overwrite) {
    const taken = await firstExisting(files.map((f) => path.join(dir, f)));
    if (taken !== undefined) throw new ConvertError(`${taken} exists; pass --overwrite to replace it, or give another folder`);
  }
  await fs.mkdir(dir, { recursive: true });
}

/** Writes `model.safetensors` (Hugging Face names, metadata format pt) and `config.json` for BertForMaskedLM. */
export async function writeHuggingFaceModel(dir: string, config: BertConfig, weights: readonly Float32Tensor[], overwrite = false): Promise<void> {
  await prepareOutDir(dir, [SAFETENSORS_FILE, HF_CONFIG_FILE], overwrite);
  await writeSafetensors(path.join(dir, SAFETENSORS_FILE), exportWeights(weights, 'hf', config), { format: 'pt' });
  const text = `${JSON.stringify(huggingFaceConfig(config), null, 2)}\n`;
  await writeFileAtomically(path.join(dir, HF_CONFIG_FILE), (h) => h.writeFile(text));
}

/**
 * Writes our tfjs LayersModel (model.json + weights.bin) with these weights, and
 * bert_config.json beside it. Loads tfjs: a backend must be selected.
 */
export async function writeLayersModel(dir: string, config: BertConfig, application: Application, weights: readonly Float32Tensor[], overwrite = false): Promise<void> {
  await prepareOutDir(dir, ['model.json', BERT_CONFIG_FILE], overwrite);
  const checked = exportWeights(weights, 'ours', config);
  const tf = await import('@tensorflow/tfjs-core');
  const { buildTransformer, disposeTransformer } = await import('../model/build.js');
  const { trainableWeights } = await import('../model/weights.js');
  const { saveModel } = await import('./layers-model-io.js');
  const model = buildTransformer(config, { application, withMlm: true, seed: 1 });
  try {
    const byName = new Map(checked.map((w) => [w.name, w]));
    for (const w of trainableWeights(model)) {
      const values = tf.tensor(byName.get(w.name)!.data, w.variable.shape, 'float32');
      w.variable.assign(values);
      values.dispose();
    }
    await saveModel(model, dir);
  } finally {
    disposeTransformer(model);
  }
  const text = `${JSON.stringify(bertConfigJson(config), null, 2)}\n`;
  await writeFileAtomically(path.join(dir, BERT_CONFIG_FILE), (h) => h.writeFile(text));
}

export interface ConvertOptions {
  readonly from: ConvertFrom;
  readonly to: ConvertTo;
  readonly input: string;
  readonly output: string;
  readonly config?: string;
  /** For --to tfjs: the attention of the model built; default the input's (tfjs), else encoder. */
  readonly application?: Application;
  readonly overwrite?: boolean;
}

export interface ConvertResult {
  readonly weights: number;
  readonly parameters: number;
  readonly config: BertConfig;
  readonly configFile: string;
  readonly notes: string[];
  readonly optimizerVariables: number;
  readonly written: string[];
}

export async function convertModel(o: ConvertOptions): Promise<ConvertResult> {
  const loaded = await loadForConversion(o.from, o.input, o.config);
  const notes = [...loaded.notes];
  let written: string[];
  if (o.to === 'safetensors') {
    if (loaded.application !== undefined && loaded.application !== 'encoder') {
      notes.push(`note: the model was trained as ${loaded.application}; BertForMaskedLM attends to every position (its weights are the same, its attention mask is not)`);
    }
    await writeHuggingFaceModel(o.output, loaded.config, loaded.weights, o.overwrite ?? false);
    written = [path.join(o.output, SAFETENSORS_FILE), path.join(o.output, HF_CONFIG_FILE)];
  } else {
    const application = o.application ?? loaded.application ?? 'encoder';
    await writeLayersModel(o.output, loaded.config, application, loaded.weights, o.overwrite ?? false);
    written = [path.join(o.output, 'model.json'), path.join(o.output, 'weights.bin'), path.join(o.output, BERT_CONFIG_FILE)];
  }
  return {
    weights: loaded.weights.length,
    parameters: loaded.weights.reduce((n, w) => n + w.data.length, 0),
    config: loaded.config,
    configFile: loaded.configFile,
    notes,
    optimizerVariables: loaded.optimizerVariables,
    written,
  };
}
