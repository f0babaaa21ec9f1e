/**
 * The places weights are read from, each as a `WeightSource` (the variables' names, dtypes and
 * shapes, and a read by name), so that one import checks them all the same way:
 * - a tfjs LayersModel folder (ours; read without tfjs: model.json + its weight files),
 * - a safetensors file (Hugging Face names; F32, F16 and BF16 read as float32),
 * - a TensorFlow checkpoint (Google BERT names; src/checkpoint/tf-checkpoint.ts).
 * Tests and other code may pass any object of the interface (a fake TF checkpoint in memory).
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Application } from '../model/build.js';
import { type BertConfig, parseBertConfig } from '../model/config.js';
import { TfCheckpoint, type TfVariableInfo } from './tf-checkpoint.js';

export interface WeightSource {
  /** What it is, for messages: a file or folder. */
  readonly description: string;
  readonly variables: readonly TfVariableInfo[];
  read(name: string): Promise<Float32Array | Int32Array>;
  close?(): Promise<void>;
}

export class ConvertError extends Error {
  override name = 'ConvertError';
}

async function readJson(file: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConvertError(code === 'ENOENT' ? `${file} does not exist (${what})` : `cannot read ${file}: ${code ?? (err as Error).message}`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new ConvertError(`${file} is not JSON (${what}): ${(err as Error).message}`);
  }
}

export async function isDirectory(p: string): Promise<boolean> {
  return (await fs.stat(p).catch(() => undefined))?.isDirectory() ?? false;
}

async function exists(p: string): Promise<boolean> {
  return (await fs.stat(p).catch(() => undefined)) !== undefined;
}

/** Reads a bert_config.json or a Hugging Face config.json (same field names) as our config. */
export async function readModelConfig(file: string): Promise<BertConfig> {
  return parseBertConfig(await readJson(file, 'the model config'), file);
}

/** The first of these files that exists, or undefined. */
export async function firstExisting(files: readonly string[]): Promise<string | undefined> {
  for (const f of files) if (await exists(f)) return f;
  return undefined;
}

// ---- tfjs LayersModel folder ------------------------------------------------------------

interface LayerJson {
  class_name: string;
  config: Record<string, unknown>;
}

const APPLICATION_OF_MASK: Record<string, Application> = { padding: 'encoder', unilm: 'unilm', causal: 'lm' };

export interface LayersModelFolder {
  readonly source: WeightSource;
  /** The config the model was built from, read back from its layers (initializer_range too). */
  readonly config: BertConfig;
  readonly application: Application;
  /** The LayerNorm epsilon of its layers. */
  readonly layerNormEpsilon: number;
}

/**
 * A LayersModel folder of ours (model.json + weights): its weights by name and the config and
 * application its layers were built with. Needs no tfjs.
 */
export async function openLayersModelFolder(dir: string): Promise<LayersModelFolder> {
  const file = path.join(dir, 'model.json');
  const json = (await readJson(file, 'a tfjs LayersModel')) as { modelTopology?: { config?: { layers?: LayerJson[] } }; weightsManifest?: { paths: string[]; weights: { name: string; shape: number[]; dtype: string }[] }[] };
  const layers = json.modelTopology?.config?.layers;
  if (!Array.isArray(layers) || !Array.isArray(json.weightsManifest)) throw new ConvertError(`${file} is not a tfjs LayersModel (no layers or weightsManifest)`);
  const layer = (name: string): Record<string, unknown> => {
    const l = layers.find((x) => x.config['name'] === name);
    if (!l) throw new ConvertError(`${file} has no layer ${name}: not a model of buildTransformer`);
    return l.config;
  };
  const num = (name: string, key: string): number => {
    const v = layer(name)[key];
    if (typeof v !== 'number') throw new ConvertError(`${file}: layer ${name} has no number ${key}`);
    return v;
  };
  const blocks = layers.filter((l) => /^Transformer-\d+-MultiHeadSelfAttention$/.test(String(l.config['name']))).length;
  if (blocks === 0) throw new ConvertError(`${file} has no Transformer blocks: not a model of buildTransformer`);
  const heads = num('Transformer-0-MultiHeadSelfAttention', 'heads');
  const config = parseBertConfig(
    {
      vocab_size: num('Embedding-Token', 'input_dim'),
      hidden_size: num('Embedding-Token', 'output_dim'),
      num_hidden_layers: blocks,
      num_attention_heads: heads,
      intermediate_size: num('Transformer-0-FeedForward', 'units'),
      hidden_act: layer('Transformer-0-FeedForward')['activation'],
      max_position_embeddings: num('Embedding-Position', 'max_length'),
      type_vocab_size: num('Embedding-Segment', 'input_dim'),
      hidden_dropout_prob: num('Embedding-Dropout', 'rate'),
      attention_probs_dropout_prob: num('Transformer-0-MultiHeadSelfAttention', 'attention_dropout'),
      initializer_range: num('Embedding-Token', 'initializer_range'),
    },
    `${file} (the config read from its layers)`,
  );
  const kind = String(layer('Attention-Mask')['kind']);
  const application = APPLICATION_OF_MASK[kind];
  if (!application) throw new ConvertError(`${file}: attention mask kind ${kind} is not one of ours`);
  const layerNormEpsilon = num('Embedding-Norm', 'epsilon');

  // the weights: each group's files concatenated, the weights in manifest order
  const variables: TfVariableInfo[] = [];
  const located = new Map<string, { bytes: Buffer; offset: number; count: number }>();
  for (const group of json.weightsManifest) {
    const parts: Buffer[] = [];
    for (const p of group.paths) {
      if (p !== path.basename(p) || p === '.' || p === '..') throw new ConvertError(`${file}: weights path "${p}" leaves the model folder; refusing to read it`);
      parts.push(await fs.readFile(path.join(dir, p)).catch((err: NodeJS.ErrnoException) => {
        throw new ConvertError(`cannot read ${path.join(dir, p)}: ${err.code ?? err.message}`);
      }));
    }
    const bytes = Buffer.concat(parts);
    let offset = 0;
    for (const w of group.weights) {
      if (w.dtype !== 'float32') throw new ConvertError(`${file}: weight ${w.name} is ${w.dtype}, not float32`);
      const count = w.shape.reduce((a, b) => a * b, 1);
      if (offset + 4 * count > bytes.length) throw new ConvertError(`${file}: the weight files end before ${w.name} (truncated?)`);
      located.set(w.name, { bytes, offset, count });
      variables.push({ name: w.name, dtype: 'float32', shape: w.shape });
      offset += 4 * count;
    }
    if (offset !== bytes.length) throw new ConvertError(`${file}: ${bytes.length - offset} bytes of the weight files belong to no weight`);
  }
  const source: WeightSource = {
    description: dir,
    variables,
    read: (name) => {
      const at = located.get(name);
      if (!at) return Promise.reject(new ConvertError(`${dir} has no weight ${name}`));
      const out = new Float32Array(at.count);
      new Uint8Array(out.buffer).set(at.bytes.subarray(at.offset, at.offset + 4 * at.count));
      return Promise.resolve(out);
    },
  };
  return { source, config, application, layerNormEpsilon };
}

// ---- safetensors (any dtype in the header; float ones read) ------------------------------

const DTYPE_BYTES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

/** A safetensors file read lazily: the header at once, a tensor's bytes when it is read. */
export async function openSafetensorsSource(file: string): Promise<WeightSource> {
  const handle = await fs.open(file, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new ConvertError(err.code === 'ENOENT' ? `${file} does not exist` : `cannot read ${file}: ${err.code ?? err.message}`);
  });
  const fail = (what: string): never => {
    throw new ConvertError(`${file} is not a valid safetensors file: ${what}`);
  };
  try {
    const size = (await handle.stat()).size;
    const prefix = Buffer.alloc(8);
    if (size < 8) fail(`it has ${size} bytes`);
    await handle.read(prefix, 0, 8, 0);
    const headerLength = Number(prefix.readBigUInt64LE(0));
    if (headerLength > size - 8) fail(`the header claims ${headerLength} bytes but the file has ${size - 8} after the length (truncated?)`);
    const headerBytes = Buffer.alloc(headerLength);
    await handle.read(headerBytes, 0, headerLength, 8);
    let header: Record<string, { dtype?: unknown; shape?: unknown; data_offsets?: unknown }>;
    try {
      header = JSON.parse(headerBytes.toString('utf8')) as typeof header;
    } catch (err) {
      return fail(`the header is not JSON (${(err as Error).message})`);
    }
    const dataStart = 8 + headerLength;
    const variables: TfVariableInfo[] = [];
    const entries = new Map<string, { dtype: string; begin: number; end: number; count: number }>();
    for (const [name, e] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const dtype = String(e.dtype);
      const shape = e.shape;
      const offsets = e.data_offsets;
      if (!(dtype in DTYPE_BYTES)) fail(`tensor ${name} has dtype ${dtype}`);
      if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && (d as number) >= 0)) fail(`tensor ${name} has no valid shape`);
      if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((d) => Number.isInteger(d) && (d as number) >= 0)) fail(`tensor ${name} has invalid data_offsets`);
      const [begin, end] = offsets as [number, number];
      const count = (shape as number[]).reduce((a, b) => a * b, 1);
      if (end - begin !== count * DTYPE_BYTES[dtype]!) fail(`tensor ${name} has ${end - begin} bytes for shape [${(shape as number[]).join(', ')}] of ${dtype}`);
      if (dataStart + end > size) fail(`tensor ${name} ends past the end of the file (truncated?)`);
      entries.set(name, { dtype, begin, end, count });
      variables.push({ name, dtype, shape: shape as number[] });
    }
    const read = async (name: string): Promise<Float32Array> => {
      const e = entries.get(name);
      if (!e) throw new ConvertError(`${file} has no tensor ${name}`);
      const bytes = Buffer.alloc(e.end - e.begin);
      await handle.read(bytes, 0, bytes.length, dataStart + e.begin);
      const out = new Float32Array(e.count);
      if (e.dtype === 'F32') new Uint8Array(out.buffer).set(bytes);
      else if (e.dtype === 'F16') for (let i = 0; i < e.count; i++) out[i] = halfToFloat(bytes.readUInt16LE(2 * i));
      else if (e.dtype === 'BF16') {
        const bits = new Uint32Array(out.buffer);
        for (let i = 0; i < e.count; i++) bits[i] = bytes.readUInt16LE(2 * i) << 16;
      } else if (e.dtype === 'F64') for (let i = 0; i < e.count; i++) out[i] = bytes.readDoubleLE(8 * i);
      else throw new ConvertError(`${file}: tensor ${name} is ${e.dtype}, not a floating-point weight`);
      return out;
    };
    return { description: file, variables, read, close: () => handle.close() };
  } catch (err) {
    await handle.close();
    throw err;
  }
}

// ---- TensorFlow checkpoint -------------------------------------------------------------

/** A TensorFlow checkpoint prefix (`model.ckpt-1000`), or a folder with one `*.index` in it. */
export async function openTfCheckpointSource(input: string): Promise<{ source: WeightSource; prefix: string }> {
  let prefix = input;
  if (await isDirectory(input)) {
    const indexes = (await fs.readdir(input)).filter((f) => f.endsWith('.index')).sort();
    if (indexes.length === 0) throw new ConvertError(`${input} holds no TensorFlow checkpoint (no *.index file); give the checkpoint prefix, e.g. ${path.join(input, 'bert_model.ckpt')}`);
    if (indexes.length > 1) throw new ConvertError(`${input} holds several checkpoints (${indexes.join(', ')}); give one prefix, e.g. ${path.join(input, indexes[0]!.slice(0, -'.index'.length))}`);
    prefix = path.join(input, indexes[0]!.slice(0, -'.index'.length));
  } else if (prefix.endsWith('.index')) prefix = prefix.slice(0, -'.index'.length);
  const ckpt = await TfCheckpoint.open(prefix);
  return {
    prefix,
    source: { description: prefix, variables: ckpt.variables, read: (name) => ckpt.read(name), close: () => ckpt.close() },
  };
}
