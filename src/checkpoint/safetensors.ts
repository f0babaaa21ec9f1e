import { promises as fs } from 'node:fs';
import { writeFileAtomically } from './atomic-write.js';

/** A float32 tensor by name, the unit of a safetensors file here. */
export interface Float32Tensor {
  readonly name: string;
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
}

interface HeaderEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

const METADATA = '__metadata__';

function size(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * Writes tensors in the safetensors format (8-byte little-endian header length, JSON
 * header, raw little-endian data), atomically, one tensor at a time so that a large
 * state never needs a second copy in memory. The header is padded to 8 bytes.
 */
export async function writeSafetensors(file: string, tensors: readonly Float32Tensor[], metadata: Readonly<Record<string, string>> = {}): Promise<void> {
  const header: Record<string, HeaderEntry | Record<string, string>> = {};
  if (Object.keys(metadata).length > 0) header[METADATA] = { ...metadata };
  let offset = 0;
  for (const t of tensors) {
    if (t.name === METADATA || t.name in header) throw new SafetensorsError(`tensor name ${t.name} is used twice or reserved`);
    if (t.data.length !== size(t.shape)) throw new SafetensorsError(`tensor ${t.name}: ${t.data.length} values for shape [${t.shape.join(', ')}]`);
    header[t.name] = { dtype: 'F32', shape: [...t.shape], data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerBytes.length));
  await writeFileAtomically(file, async (handle) => {
    await handle.write(prefix);
    await handle.write(headerBytes);
    for (const t of tensors) {
      // little-endian hosts (x86, ARM) store Float32Array in file order already
      await handle.write(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    }
  });
}

/** Reads a safetensors file of float32 tensors, checking that the header and the data agree. */
export async function readSafetensors(file: string): Promise<{ tensors: Float32Tensor[]; metadata: Record<string, string> }> {
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new SafetensorsError(code === 'ENOENT' ? `${file} does not exist` : `cannot read ${file}: ${(err as Error).message}`);
  }
  const fail = (what: string): never => {
    throw new SafetensorsError(`${file} is not a valid safetensors file: ${what}`);
  };
  if (bytes.length < 8) fail(`it has ${bytes.length} bytes, fewer than the 8-byte header length`);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  if (headerLength > bytes.length - 8) fail(`the header claims ${headerLength} bytes but the file has ${bytes.length - 8} after the length (truncated?)`);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8')) as Record<string, unknown>;
  } catch (err) {
    return fail(`the header is not JSON (${(err as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('the header is not a JSON object');
  const dataStart = 8 + headerLength;
  const dataLength = bytes.length - dataStart;
  const metadata: Record<string, string> = {};
  const tensors: (Float32Tensor & { begin: number; end: number })[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === METADATA) {
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) fail('__metadata__ is not an object of strings');
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== 'string') fail(`metadata ${k} is not a string`);
        metadata[k] = v as string;
      }
      continue;
    }
    const e = entry as Partial<HeaderEntry>;
    if (e.dtype !== 'F32') fail(`tensor ${name} has dtype ${String(e.dtype)}; only F32 is read here`);
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isInteger(d) && d >= 0)) fail(`tensor ${name} has no valid shape`);
    const [begin, end] = Array.isArray(e.data_offsets) ? e.data_offsets : [NaN, NaN];
    if (!Number.isInteger(begin) || !Number.isInteger(end) || begin < 0 || end < begin) fail(`tensor ${name} has invalid data_offsets`);
    if (end - begin !== 4 * size(e.shape!)) fail(`tensor ${name} has ${end - begin} bytes for shape [${e.shape!.join(', ')}]`);
    if (end > dataLength) fail(`tensor ${name} needs bytes up to ${dataStart + end} but the file ends at ${bytes.length} (truncated?)`);
    const data = new Float32Array((end - begin) / 4);
    new Uint8Array(data.buffer).set(bytes.subarray(dataStart + begin, dataStart + end));
    tensors.push({ name, shape: e.shape!, data, begin, end });
  }
  // the tensors must tile the data exactly: no overlap, no gap, nothing after the last
  const byOffset = [...tensors].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let covered = 0;
  for (const t of byOffset) {
    if (t.begin !== covered) fail(t.begin < covered ? `tensor ${t.name} overlaps the tensor before it` : `${t.begin - covered} bytes before tensor ${t.name} belong to no tensor`);
    covered = t.end;
  }
  if (covered !== dataLength) fail(`${dataLength - covered} bytes after the last tensor belong to none`);
  return { tensors: tensors.map(({ name, shape, data }) => ({ name, shape, data })), metadata };
}
