/**
 * TensorFlow checkpoints (the V2 "tensor bundle" format of tf.train.Saver and
 * tf.train.Checkpoint), read without TensorFlow. Written from the format's public description:
 *
 * - `PREFIX.index` is a LevelDB-style SSTable: data blocks of prefix-compressed entries with
 *   restart points, an index block mapping a key >= each data block's last key to that
 *   block's handle, and a 48-byte footer (two handles, padding, magic 0xdb4775248b80fb57).
 *   Every block is followed by its compression type (0 none, 1 Snappy) and the masked
 *   CRC32C of the block and that type byte.
 * - The table's keys are variable names; each value a serialized BundleEntryProto (dtype,
 *   shape, shard, offset, size, masked CRC32C of the bytes); the empty key holds the
 *   BundleHeaderProto (number of shards, endianness).
 * - `PREFIX.data-00000-of-0000N` hold the raw little-endian bytes of the tensors.
 *
 * The index is read whole at open (it is small: a few hundred bytes per variable); tensor
 * bytes are read only by `read()`, so a caller skips what it does not need (BERT's
 * `adam_m`/`adam_v` slots are as large as the weights).
 */
import { crc32c } from '@node-rs/crc32';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import snappy from 'snappyjs';

export interface TfVariableInfo {
  readonly name: string;
  /** TensorFlow's name of the dtype: 'float32', 'int32', 'int64', 'string', 'float16', ... */
  readonly dtype: string;
  readonly shape: readonly number[];
}

/**
 * Why a checkpoint could not be read: `missing` (no such path, checkpoint or variable: fix
 * the request), `damaged` (corrupt or truncated files), `unsupported` (a valid checkpoint
 * with something this reader does not read: a dtype, slices, big-endian data).
 */
export type TfCheckpointProblem = 'missing' | 'damaged' | 'unsupported';

export class TfCheckpointError extends Error {
  override name = 'TfCheckpointError';
  constructor(
    message: string,
    readonly problem: TfCheckpointProblem = 'damaged',
  ) {
    super(message);
  }
}

// ---- dtypes ----

/** tensorflow/core/framework/types.proto's DataType, by number, as TensorFlow's Python names it. */
const DTYPE_NAMES: Readonly<Record<number, string>> = {
  1: 'float32',
  2: 'float64',
  3: 'int32',
  4: 'uint8',
  5: 'int16',
  6: 'int8',
  7: 'string',
  8: 'complex64',
  9: 'int64',
  10: 'bool',
  11: 'qint8',
  12: 'quint8',
  13: 'qint32',
  14: 'bfloat16',
  15: 'qint16',
  16: 'quint16',
  17: 'uint16',
  18: 'complex128',
  19: 'float16',
  20: 'resource',
  21: 'variant',
  22: 'uint32',
  23: 'uint64',
  24: 'float8_e5m2',
  25: 'float8_e4m3fn',
  26: 'float8_e4m3fnuz',
  27: 'float8_e4m3b11fnuz',
  28: 'float8_e5m2fnuz',
  29: 'int4',
  30: 'uint4',
};

/** Bytes per element of the dtypes whose tensors are plain arrays (the size of every entry is checked against them). */
const ELEMENT_BYTES: Readonly<Record<string, number>> = {
  float32: 4, float64: 8, int32: 4, uint8: 1, int16: 2, int8: 1, complex64: 8, int64: 8, bool: 1, qint8: 1, quint8: 1, qint32: 4,
  bfloat16: 2, qint16: 2, quint16: 2, uint16: 2, complex128: 16, float16: 2, uint32: 4, uint64: 8,
  float8_e5m2: 1, float8_e4m3fn: 1, float8_e4m3fnuz: 1, float8_e4m3b11fnuz: 1, float8_e5m2fnuz: 1,
};

/** What `read()` returns them as: float32 as is, float16/bfloat16 widened exactly, int32 as is, int64 when every value fits in int32. */
const READ_DTYPES = ['float32', 'float16', 'bfloat16', 'int32', 'int64'] as const;

function dtypeName(code: number): string {
  if (code > 100 && DTYPE_NAMES[code - 100]) return `${DTYPE_NAMES[code - 100]}_ref`;
  return DTYPE_NAMES[code] ?? `dtype_${code}`;
}

// ---- varints and protobuf wire format ----

class Cursor {
  pos: number;
  constructor(
    readonly bytes: Uint8Array,
    start = 0,
    readonly end = bytes.length,
  ) {
    this.pos = start;
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  /** An unsigned varint of up to 64 bits, as a bigint. */
  varintBig(): bigint {
    let result = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (this.pos >= this.end) throw new RangeError('a varint runs past the end');
      const b = this.bytes[this.pos++]!;
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return result & 0xffffffffffffffffn;
    }
    throw new RangeError('a varint longer than 10 bytes');
  }

  /** An unsigned varint that must be a safe integer (lengths, offsets, sizes). */
  varint(): number {
    const v = this.varintBig();
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`varint ${v} is too large`);
    return Number(v);
  }

  take(n: number): Uint8Array {
    if (n > this.end - this.pos) throw new RangeError(`${n} bytes wanted, ${this.end - this.pos} left`);
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  fixed32(): number {
    const b = this.take(4);
    return (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
  }
}

type Field = { readonly number: number; readonly varint: bigint } | { readonly number: number; readonly bytes: Uint8Array } | { readonly number: number; readonly fixed32: number };

/** The fields of a protobuf message in order; 64-bit fixed fields and groups are skipped. */
function* protoFields(bytes: Uint8Array): Generator<Field> {
  const c = new Cursor(bytes);
  while (!c.done) {
    const key = c.varint();
    const number = Math.floor(key / 8);
    switch (key & 7) {
      case 0:
        yield { number, varint: c.varintBig() };
        break;
      case 1:
        c.take(8);
        break;
      case 2:
        yield { number, bytes: c.take(c.varint()) };
        break;
      case 5:
        yield { number, fixed32: c.fixed32() };
        break;
      default:
        throw new RangeError(`protobuf wire type ${key & 7} of field ${number}`);
    }
  }
}

/** int64/int32 fields are varints of their two's complement. */
function signed64(v: bigint): number {
  return Number(BigInt.asIntN(64, v));
}

interface Entry {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
  readonly shard: number;
  readonly offset: number;
  readonly size: number;
  readonly crc32c: number;
  readonly slices: number;
}

function decodeShape(bytes: Uint8Array): number[] {
  const shape: number[] = [];
  for (const f of protoFields(bytes)) {
    if (f.number === 2 && 'bytes' in f) {
      let size = 0;
      for (const d of protoFields(f.bytes)) if (d.number === 1 && 'varint' in d) size = signed64(d.varint);
      shape.push(size);
    } else if (f.number === 3 && 'varint' in f && f.varint !== 0n) {
      throw new RangeError('the shape has unknown rank');
    }
  }
  return shape;
}

function decodeEntry(name: string, bytes: Uint8Array): Entry {
  let dtype = 0;
  let shape: number[] = [];
  let shard = 0;
  let offset = 0;
  let size = 0;
  let crc = 0;
  let slices = 0;
  for (const f of protoFields(bytes)) {
    if ('varint' in f) {
      if (f.number === 1) dtype = Number(BigInt.asUintN(32, f.varint));
      else if (f.number === 3) shard = signed64(f.varint);
      else if (f.number === 4) offset = signed64(f.varint);
      else if (f.number === 5) size = signed64(f.varint);
    } else if ('bytes' in f) {
      if (f.number === 2) shape = decodeShape(f.bytes);
      else if (f.number === 7) slices++;
    } else if (f.number === 6) {
      crc = f.fixed32;
    }
  }
  return { name, dtype: dtypeName(dtype), shape, shard, offset, size, crc32c: crc, slices };
}

interface Header {
  readonly numShards: number;
  readonly bigEndian: boolean;
}

function decodeHeader(bytes: Uint8Array): Header {
  let numShards = 0;
  let endianness = 0;
  for (const f of protoFields(bytes)) {
    if (!('varint' in f)) continue;
    if (f.number === 1) numShards = signed64(f.varint);
    else if (f.number === 2) endianness = Number(f.varint);
  }
  return { numShards, bigEndian: endianness === 1 };
}

// ---- the SSTable ----

const FOOTER_BYTES = 48;
const MAGIC_LOW = 0x8b80fb57;
const MAGIC_HIGH = 0xdb477524;
const TRAILER_BYTES = 5;
const MASK_DELTA = 0xa282ead8;

function maskCrc(crc: number): number {
  return (((crc >>> 15) | (crc << 17)) + MASK_DELTA) >>> 0;
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

interface BlockHandle {
  readonly offset: number;
  readonly size: number;
}

function readHandle(c: Cursor): BlockHandle {
  return { offset: c.varint(), size: c.varint() };
}

/** The table in `file` (its bytes `table`): reads, checks and decompresses blocks, and walks their entries. */
class Table {
  constructor(
    readonly file: string,
    readonly table: Buffer,
  ) {}

  damaged(what: string): TfCheckpointError {
    return new TfCheckpointError(`${this.file} is not a valid TensorFlow checkpoint index: ${what}`);
  }

  footer(): { metaindex: BlockHandle; index: BlockHandle } {
    const t = this.table;
    if (t.length < FOOTER_BYTES || t.readUInt32LE(t.length - 8) !== MAGIC_LOW || t.readUInt32LE(t.length - 4) !== MAGIC_HIGH) {
      throw this.damaged(`bad footer magic (${t.length < FOOTER_BYTES ? `only ${t.length} bytes` : 'the file is truncated or not an index'})`);
    }
    try {
      const c = new Cursor(t, t.length - FOOTER_BYTES, t.length - 8);
      return { metaindex: readHandle(c), index: readHandle(c) };
    } catch (err) {
      throw this.damaged(`bad footer (${(err as Error).message})`);
    }
  }

  /** A block's contents, CRC-checked and decompressed. */
  block(handle: BlockHandle, what: string): Uint8Array {
    const { offset, size } = handle;
    const where = `${what} at byte ${offset} (${size} bytes)`;
    if (offset + size + TRAILER_BYTES > this.table.length - FOOTER_BYTES) throw this.damaged(`the ${where} runs past the end of the file (truncated?)`);
    const contents = this.table.subarray(offset, offset + size);
    const type = this.table.subarray(offset + size, offset + size + 1);
    const stored = this.table.readUInt32LE(offset + size + 1);
    if (maskCrc(crc32c(type, crc32c(contents)) >>> 0) !== stored) throw this.damaged(`checksum mismatch in the ${where}`);
    if (type[0] === 0) return contents;
    if (type[0] === 1) {
      try {
        return snappy.uncompress(contents);
      } catch (err) {
        throw this.damaged(`the Snappy-compressed ${where} does not decompress (${(err as Error).message})`);
      }
    }
    throw new TfCheckpointError(`${this.file}: the ${where} has compression type ${type[0]}; only 0 (none) and 1 (Snappy) are read`, 'unsupported');
  }

  /** The entries of a block, keys rebuilt from their shared prefixes; checks the restart array. */
  *entries(contents: Uint8Array, what: string): Generator<{ key: Buffer; value: Uint8Array }> {
    if (contents.length < 4) throw this.damaged(`the ${what} has ${contents.length} bytes, too few for its restart count`);
    const view = asBuffer(contents);
    const restarts = view.readUInt32LE(contents.length - 4);
    const entriesEnd = contents.length - 4 - 4 * restarts;
    if (restarts < 1 || entriesEnd < 0) throw this.damaged(`the ${what} claims ${restarts} restart points in ${contents.length} bytes`);
    const fresh = new Set<number>(); // offsets of entries that share nothing with the key before
    const c = new Cursor(contents, 0, entriesEnd);
    let key = Buffer.alloc(0);
    try {
      while (!c.done) {
        const at = c.pos;
        const shared = c.varint();
        const unshared = c.varint();
        const valueLength = c.varint();
        if (shared > key.length) throw new RangeError(`an entry shares ${shared} bytes with a ${key.length}-byte key`);
        if (shared === 0) fresh.add(at);
        key = Buffer.concat([key.subarray(0, shared), c.take(unshared)]);
        yield { key, value: c.take(valueLength) };
      }
    } catch (err) {
      if (err instanceof TfCheckpointError) throw err;
      throw this.damaged(`a malformed entry in the ${what} (${(err as Error).message})`);
    }
    for (let i = 0; i < restarts; i++) {
      const r = view.readUInt32LE(entriesEnd + 4 * i);
      if (!fresh.has(r) && !(r === 0 && entriesEnd === 0)) throw this.damaged(`restart point ${i} of the ${what} (${r}) is not the start of a full key`);
    }
  }

  /** Every key and value of the table in order, checking that keys increase. */
  *all(): Generator<{ key: Buffer; value: Uint8Array }> {
    const { index } = this.footer();
    let last: Buffer | undefined;
    let blockNumber = 0;
    for (const ie of this.entries(this.block(index, 'index block'), 'index block')) {
      let handle: BlockHandle;
      try {
        const c = new Cursor(ie.value);
        handle = readHandle(c);
      } catch (err) {
        throw this.damaged(`a bad block handle in the index block (${(err as Error).message})`);
      }
      const what = `data block ${blockNumber++}`;
      for (const e of this.entries(this.block(handle, what), what)) {
        if (last !== undefined && Buffer.compare(last, e.key) >= 0) throw this.damaged(`keys out of order in the ${what} ("${e.key.toString()}" after "${last.toString()}")`);
        last = e.key;
        yield e;
      }
      if (last !== undefined && Buffer.compare(last, ie.key) > 0) throw this.damaged(`the index key of the ${what} is below its last key`);
    }
  }
}

// ---- where a checkpoint is ----

async function statOrUndefined(file: string): Promise<import('node:fs').Stats | undefined> {
  return fs.stat(file).catch(() => undefined);
}

/**
 * The prefix of the checkpoint that `where` names: a prefix (`PREFIX.index` exists), the
 * `.index` file itself, or a folder holding one checkpoint (or several and the `checkpoint`
 * file that TensorFlow writes, naming the latest).
 */
async function resolvePrefix(where: string): Promise<string> {
  const stats = await statOrUndefined(where);
  if (stats?.isDirectory()) {
    const names = await fs.readdir(where);
    const indexes = names.filter((n) => n.endsWith('.index')).map((n) => n.slice(0, -'.index'.length));
    const withData = indexes.filter((p) => names.some((n) => n.startsWith(`${p}.data-`)));
    const candidates = withData.length > 0 ? withData : indexes;
    if (candidates.length === 1) return path.join(where, candidates[0]!);
    if (candidates.length === 0) throw new TfCheckpointError(`${where} holds no TensorFlow checkpoint (no NAME.index file)`, 'missing');
    const latest = names.includes('checkpoint') ? /^model_checkpoint_path:\s*"(.*)"\s*$/m.exec(await fs.readFile(path.join(where, 'checkpoint'), 'utf8'))?.[1] : undefined;
    if (latest !== undefined) {
      // the file often holds the absolute path of the machine that trained: then look beside it
      const named = path.resolve(where, latest);
      return (await statOrUndefined(`${named}.index`)) ? named : path.join(where, path.basename(latest));
    }
    throw new TfCheckpointError(`${where} holds ${candidates.length} checkpoints (${candidates.sort().join(', ')}) and no checkpoint file naming the latest; give the prefix of one`, 'missing');
  }
  if (stats?.isFile() && where.endsWith('.index')) return where.slice(0, -'.index'.length);
  if (await statOrUndefined(`${where}.index`)) return where;
  if (stats) throw new TfCheckpointError(`${where} is not a TensorFlow checkpoint: give its prefix (PREFIX.index and PREFIX.data-* exist), its .index file or its folder`, 'missing');
  throw new TfCheckpointError(`no TensorFlow checkpoint at ${where}: ${where}.index does not exist`, 'missing');
}

function shardFile(prefix: string, shard: number, shards: number): string {
  return `${prefix}.data-${String(shard).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}`;
}

function elements(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** IEEE half precision to single: exact. */
function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 31) return fraction === 0 ? sign * Infinity : NaN;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** A TensorFlow V2 checkpoint, open for reading variables one at a time. */
export class TfCheckpoint {
  readonly variables: readonly TfVariableInfo[];
  private readonly handles = new Map<number, Promise<fs.FileHandle>>();
  private closed = false;

  private constructor(
    readonly prefix: string,
    private readonly shards: number,
    private readonly entries: ReadonlyMap<string, Entry>,
  ) {
    this.variables = [...entries.values()].map(({ name, dtype, shape }) => ({ name, dtype, shape }));
  }

  /** Opens `PREFIX.index` (give the prefix, the .index file or the folder), reads and checks the whole index, and checks that every data shard exists. */
  static async open(where: string): Promise<TfCheckpoint> {
    const prefix = await resolvePrefix(where);
    const indexFile = `${prefix}.index`;
    let bytes: Buffer;
    try {
      bytes = await fs.readFile(indexFile);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new TfCheckpointError(code === 'ENOENT' ? `${indexFile} does not exist` : `cannot read ${indexFile}: ${(err as Error).message}`, 'missing');
    }
    const table = new Table(indexFile, bytes);
    let header: Header | undefined;
    const entries = new Map<string, Entry>();
    for (const { key, value } of table.all()) {
      try {
        if (key.length === 0) header = decodeHeader(value);
        else entries.set(key.toString('utf8'), decodeEntry(key.toString('utf8'), value));
      } catch (err) {
        throw table.damaged(`the ${key.length === 0 ? 'header' : `entry of ${key.toString('utf8')}`} is not a valid protobuf (${(err as Error).message})`);
      }
    }
    if (!header) throw table.damaged('no header (the entry under the empty key)');
    if (header.bigEndian) throw new TfCheckpointError(`${indexFile}: the checkpoint was written big-endian; only little-endian checkpoints are read`, 'unsupported');
    if (header.numShards < 1 && entries.size > 0) throw table.damaged(`the header says ${header.numShards} data shards`);
    for (const e of entries.values()) {
      if (e.shape.some((d) => !Number.isSafeInteger(d) || d < 0)) throw table.damaged(`variable ${e.name} has shape [${e.shape.join(', ')}]`);
      if (e.shard < 0 || e.shard >= header.numShards) throw table.damaged(`variable ${e.name} is in shard ${e.shard} of ${header.numShards}`);
      if (e.offset < 0 || e.size < 0) throw table.damaged(`variable ${e.name} has offset ${e.offset} and size ${e.size}`);
      const width = ELEMENT_BYTES[e.dtype];
      if (e.slices === 0 && width !== undefined && e.size !== width * elements(e.shape)) {
        throw table.damaged(`variable ${e.name} (${e.dtype}, shape [${e.shape.join(', ')}]) has ${e.size} bytes, not ${width * elements(e.shape)}`);
      }
    }
    for (let shard = 0; shard < header.numShards; shard++) {
      const file = shardFile(prefix, shard, header.numShards);
      if (!(await statOrUndefined(file))?.isFile()) throw new TfCheckpointError(`data shard ${file} of checkpoint ${prefix} is missing`, 'missing');
    }
    return new TfCheckpoint(prefix, header.numShards, entries);
  }

  /**
   * The values of one variable, after checking its CRC32C: float32 (and float16/bfloat16,
   * widened exactly) as a Float32Array; int32 as an Int32Array; int64 as an Int32Array when
   * every value fits in int32 (Google BERT's `global_step`), refused otherwise.
   */
  async read(name: string): Promise<Float32Array | Int32Array> {
    if (this.closed) throw new TfCheckpointError(`checkpoint ${this.prefix} is closed`, 'missing');
    const e = this.entries.get(name);
    if (!e) throw new TfCheckpointError(`checkpoint ${this.prefix} has no variable ${name}`, 'missing');
    if (e.slices > 0) throw new TfCheckpointError(`variable ${name} of checkpoint ${this.prefix} is partitioned (saved in ${e.slices} slices); partitioned variables are not read`, 'unsupported');
    if (!(READ_DTYPES as readonly string[]).includes(e.dtype)) {
      throw new TfCheckpointError(`variable ${name} of checkpoint ${this.prefix} has dtype ${e.dtype}; only ${READ_DTYPES.join(', ')} are read`, 'unsupported');
    }
    const file = shardFile(this.prefix, e.shard, this.shards);
    const n = elements(e.shape);
    const out = e.dtype === 'float32' ? new Float32Array(n) : e.dtype === 'int32' ? new Int32Array(n) : undefined;
    const bytes = out ? new Uint8Array(out.buffer) : new Uint8Array(e.size);
    const handle = await this.handle(e.shard, file);
    let got = 0;
    while (got < e.size) {
      const { bytesRead } = await handle.read(bytes, got, e.size - got, e.offset + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    const where = `bytes ${e.offset} to ${e.offset + e.size}`;
    if (got < e.size) throw new TfCheckpointError(`${file} ends at byte ${e.offset + got} but variable ${name} needs ${where} (truncated?)`);
    if (maskCrc(crc32c(asBuffer(bytes)) >>> 0) !== e.crc32c) throw new TfCheckpointError(`checksum mismatch for variable ${name} in ${file} (${where}): the data is damaged`);
    // little-endian hosts (x86, ARM) hold typed arrays in file order already
    if (out) return out;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (e.dtype === 'int64') {
      const ints = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const v = view.getBigInt64(8 * i, true);
        if (v < -0x80000000n || v > 0x7fffffffn) throw new TfCheckpointError(`variable ${name} (int64) has value ${v} at index ${i}, outside the int32 range; it is not read`, 'unsupported');
        ints[i] = Number(v);
      }
      return ints;
    }
    const floats = new Float32Array(n);
    if (e.dtype === 'bfloat16') {
      const bits = new Uint32Array(floats.buffer);
      for (let i = 0; i < n; i++) bits[i] = view.getUint16(2 * i, true) << 16;
    } else {
      for (let i = 0; i < n; i++) floats[i] = halfToFloat(view.getUint16(2 * i, true));
    }
    return floats;
  }

  async close(): Promise<void> {
    this.closed = true;
    const handles = [...this.handles.values()];
    this.handles.clear();
    for (const h of handles) await (await h.catch(() => undefined))?.close();
  }

  private handle(shard: number, file: string): Promise<fs.FileHandle> {
    let h = this.handles.get(shard);
    if (!h) {
      h = fs.open(file, 'r').catch((err: unknown) => {
        this.handles.delete(shard);
        throw new TfCheckpointError(`cannot open data shard ${file}: ${(err as Error).message}`, 'missing');
      });
      this.handles.set(shard, h);
    }
    return h;
  }
}
