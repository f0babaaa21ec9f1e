import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

/** One feature of a tf.train.Example: a list of int64s, floats or byte strings. */
export type Feature = { readonly kind: 'int64'; readonly values: readonly (number | bigint)[] } | { readonly kind: 'float'; readonly values: readonly number[] } | { readonly kind: 'bytes'; readonly values: readonly Uint8Array[] };

export type Example = Readonly<Record<string, Feature>>;

export class ExampleError extends Error {
  override name = 'ExampleError';
}

// dist/src/data -> repo root, or src/data -> repo root
const PROTO_CANDIDATES = [new URL('../../../proto/tensorflow/example.proto', import.meta.url), new URL('../../proto/tensorflow/example.proto', import.meta.url)];

let exampleType: protobuf.Type | undefined;

function type(): protobuf.Type {
  if (!exampleType) {
    const file = PROTO_CANDIDATES.find((u) => existsSync(u));
    if (!file) throw new ExampleError('proto/tensorflow/example.proto is missing from the installation');
    exampleType = protobuf.loadSync(fileURLToPath(file)).lookupType('tensorflow.Example');
  }
  return exampleType;
}

export function int64Feature(values: ArrayLike<number> | readonly (number | bigint)[]): Feature {
  return { kind: 'int64', values: Array.from(values as ArrayLike<number | bigint>) };
}

export function floatFeature(values: ArrayLike<number>): Feature {
  return { kind: 'float', values: Array.from(values) };
}

export function bytesFeature(values: readonly (Uint8Array | string)[]): Feature {
  return { kind: 'bytes', values: values.map((v) => (typeof v === 'string' ? Buffer.from(v, 'utf8') : v)) };
}

/** Serializes an Example; features are written in sorted name order, so equal examples give equal bytes. */
export function encodeExample(example: Example): Uint8Array {
  const feature: Record<string, unknown> = {};
  for (const name of Object.keys(example).sort()) {
    const f = example[name]!;
    if (f.kind === 'int64') feature[name] = { int64List: { value: f.values.map((v) => (typeof v === 'bigint' ? v.toString() : v)) } };
    else if (f.kind === 'float') feature[name] = { floatList: { value: f.values } };
    else feature[name] = { bytesList: { value: f.values } };
  }
  const t = type();
  return t.encode(t.fromObject({ features: { feature } })).finish();
}

interface DecodedFeature {
  bytesList?: { value?: Uint8Array[] };
  floatList?: { value?: number[] };
  int64List?: { value?: (number | protobuf.Long)[] };
}

/** int64 values within 2^53 come back as numbers, larger ones as bigints. */
function int64Value(v: number | protobuf.Long): number | bigint {
  if (typeof v === 'number') return v;
  const big = BigInt(v.toString());
  return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

/** Parses a serialized tf.train.Example (ours or TensorFlow's). */
export function decodeExample(bytes: Uint8Array): Example {
  let message: { features?: { feature?: Record<string, DecodedFeature> } };
  try {
    message = type().decode(bytes) as unknown as typeof message;
  } catch (err) {
    throw new ExampleError(`not a tf.train.Example: ${(err as Error).message}`);
  }
  const out: Record<string, Feature> = {};
  for (const [name, f] of Object.entries(message.features?.feature ?? {})) {
    if (f.int64List) out[name] = { kind: 'int64', values: (f.int64List.value ?? []).map(int64Value) };
    else if (f.floatList) out[name] = { kind: 'float', values: f.floatList.value ?? [] };
    else if (f.bytesList) out[name] = { kind: 'bytes', values: f.bytesList.value ?? [] };
    else out[name] = { kind: 'int64', values: [] }; // a Feature with no kind set: TensorFlow reads it as empty
  }
  return out;
}

/** The JSON form `pretrain inspect` prints: int64 as numbers (exact digits beyond 2^53), floats, bytes as base64. */
export function exampleToJson(example: Example): string {
  const parts = Object.keys(example)
    .sort()
    .map((name) => {
      const f = example[name]!;
      const values = f.kind === 'bytes' ? f.values.map((v) => JSON.stringify(Buffer.from(v).toString('base64'))) : f.values.map((v) => (typeof v === 'bigint' ? v.toString() : Number.isFinite(v) ? String(v) : JSON.stringify(String(v))));
      return `${JSON.stringify(name)}:{${JSON.stringify(f.kind)}:[${values.join(',')}]}`;
    });
  return `{${parts.join(',')}}`;
}
