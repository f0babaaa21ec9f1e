import { crc32c } from '@node-rs/crc32';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomically } from '../checkpoint/atomic-write.js';

/**
 * TFRecord files: each record is a little-endian uint64 length, the masked CRC32C of those
 * 8 bytes, the data, and the masked CRC32C of the data (TensorFlow's framing).
 */

const HEADER_BYTES = 12;
const FOOTER_BYTES = 4;
const MASK_DELTA = 0xa282ead8;

/** TensorFlow's CRC mask: rotate right by 15 bits and add a constant, modulo 2^32. */
export function maskCrc(crc: number): number {
  return (((crc >>> 15) | (crc << 17)) + MASK_DELTA) >>> 0;
}

export function maskedCrc32c(bytes: Uint8Array): number {
  return maskCrc(crc32c(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)) >>> 0);
}

/** One record's bytes on disk. */
export function frameRecord(data: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + data.length + FOOTER_BYTES);
  out.writeBigUInt64LE(BigInt(data.length), 0);
  out.writeUInt32LE(maskedCrc32c(out.subarray(0, 8)), 8);
  out.set(data, HEADER_BYTES);
  out.writeUInt32LE(maskedCrc32c(data), HEADER_BYTES + data.length);
  return out;
}

/** A corrupt or truncated TFRecord file: names the file and the byte offset of the bad record. */
export class TFRecordError extends Error {
  override name = 'TFRecordError';

  constructor(
    readonly file: string,
    readonly offset: number,
    problem: string,
  ) {
    super(`${file}: ${problem} at byte ${offset}`);
  }
}

export interface RecordAt {
  /** 0-based record number in the file. */
  readonly index: number;
  /** Byte offset of the record's header. */
  readonly offset: number;
  readonly data: Uint8Array;
}

/** Checks one record's framing in `buf` (which holds the record from `offset`); returns its data length. */
function checkHeader(file: string, header: Buffer, offset: number): number {
  const length = header.readBigUInt64LE(0);
  if (header.readUInt32LE(8) !== maskedCrc32c(header.subarray(0, 8))) throw new TFRecordError(file, offset, 'corrupt record header (length CRC mismatch)');
  if (length > BigInt(Number.MAX_SAFE_INTEGER)) throw new TFRecordError(file, offset, `record length ${length} is impossible`);
  return Number(length);
}

const CHUNK = 1 << 20;

/**
 * Streams the records of a file in order, verifying both CRCs of each. On a corrupt or
 * truncated record it throws a TFRecordError naming the offset, after yielding only the
 * complete, verified records before it.
 */
export async function* readRecords(file: string, options: { verifyData?: boolean } = {}): AsyncGenerator<RecordAt> {
  const verifyData = options.verifyData ?? true;
  const handle = await openForReading(file);
  try {
    const size = (await handle.stat()).size;
    let buf = Buffer.alloc(0);
    let bufStart = 0; // file offset of buf[0]
    let offset = 0;
    let index = 0;
    const fill = async (need: number): Promise<void> => {
      // keep reading until buf holds [offset, offset + need) or the file ends
      while (bufStart + buf.length < Math.min(size, offset + need)) {
        const want = Math.max(CHUNK, offset + need - (bufStart + buf.length));
        const chunk = Buffer.allocUnsafe(Math.min(want, size - (bufStart + buf.length)));
        const { bytesRead } = await handle.read(chunk, 0, chunk.length, bufStart + buf.length);
        if (bytesRead === 0) break;
        buf = Buffer.concat([buf.subarray(offset - bufStart), chunk.subarray(0, bytesRead)]);
        bufStart = offset;
      }
    };
    while (offset < size) {
      await fill(HEADER_BYTES);
      if (size - offset < HEADER_BYTES) throw new TFRecordError(file, offset, `truncated record header (${size - offset} of ${HEADER_BYTES} bytes)`);
      const length = checkHeader(file, buf.subarray(offset - bufStart, offset - bufStart + HEADER_BYTES), offset);
      const total = HEADER_BYTES + length + FOOTER_BYTES;
      if (size - offset < total) throw new TFRecordError(file, offset, `truncated record (${length} data bytes declared, ${Math.max(0, size - offset - HEADER_BYTES)} of ${length + FOOTER_BYTES} present)`);
      await fill(total);
      const start = offset - bufStart + HEADER_BYTES;
      const data = buf.subarray(start, start + length);
      if (verifyData && buf.readUInt32LE(start + length) !== maskedCrc32c(data)) throw new TFRecordError(file, offset, 'corrupt record data (data CRC mismatch)');
      yield { index, offset, data: new Uint8Array(data) };
      index++;
      offset += total;
    }
  } finally {
    await handle.close();
  }
}

/** Opens a file to read records from; a missing or unopenable file is a TFRecordError naming it. */
export async function openForReading(file: string): Promise<fs.FileHandle> {
  try {
    const handle = await fs.open(file, 'r');
    if (!(await handle.stat()).isFile()) {
      await handle.close();
      throw new TFRecordError(file, 0, 'not a file');
    }
    return handle;
  } catch (err) {
    if (err instanceof TFRecordError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new TFRecordError(file, 0, code === 'ENOENT' ? 'no such file' : `cannot open (${(err as Error).message})`);
  }
}

export interface ShardSummary {
  readonly file: string;
  readonly records: number;
  readonly bytes: number;
  /** SHA-256 of the whole file, hex. */
  readonly sha256: string;
}

/**
 * Writes a TFRecord file under a temporary name beside it and renames it into place only
 * on `close`, so a killed or failed writer never leaves a file that reads as complete.
 */
export class TFRecordWriter {
  private records = 0;
  private bytes = 0;
  private readonly hash = createHash('sha256');
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private closed = false;

  private constructor(
    readonly file: string,
    private readonly temp: string,
    private readonly handle: fs.FileHandle,
  ) {}

  static async create(file: string): Promise<TFRecordWriter> {
    const temp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
    return new TFRecordWriter(file, temp, await fs.open(temp, 'wx'));
  }

  async write(data: Uint8Array): Promise<void> {
    if (this.closed) throw new Error(`${this.file}: write after close`);
    const framed = frameRecord(data);
    this.hash.update(framed);
    this.pending.push(framed);
    this.pendingBytes += framed.length;
    this.records++;
    this.bytes += framed.length;
    if (this.pendingBytes >= CHUNK) await this.flush();
  }

  private async flush(): Promise<void> {
    if (this.pending.length === 0) return;
    const chunk = Buffer.concat(this.pending);
    this.pending = [];
    this.pendingBytes = 0;
    await this.handle.write(chunk);
  }

  /** Flushes, fsyncs and renames into place; returns what a manifest lists. */
  async close(): Promise<ShardSummary> {
    if (this.closed) throw new Error(`${this.file}: closed twice`);
    this.closed = true;
    try {
      await this.flush();
      await this.handle.sync();
      await this.handle.close();
      await fs.rename(this.temp, this.file);
    } catch (err) {
      await this.handle.close().catch(() => undefined);
      await fs.rm(this.temp, { force: true });
      throw err;
    }
    return { file: this.file, records: this.records, bytes: this.bytes, sha256: this.hash.digest('hex') };
  }

  /** Drops the partial file. */
  async abort(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close().catch(() => undefined);
    await fs.rm(this.temp, { force: true });
  }
}

const INDEX_MAGIC = Buffer.from('TFRIDX1\0', 'latin1');

/**
 * Random access by record number: the byte offset of every record, built once per shard
 * by one verifying pass, saved beside it as `<shard>.index` (magic, shard size, count,
 * offsets; little-endian uint64). An index whose shard size no longer matches is rebuilt.
 */
export class TFRecordIndex {
  private constructor(
    readonly file: string,
    readonly offsets: Float64Array,
    readonly shardBytes: number,
  ) {}

  get count(): number {
    return this.offsets.length;
  }

  static async build(file: string): Promise<TFRecordIndex> {
    const offsets: number[] = [];
    for await (const r of readRecords(file)) offsets.push(r.offset);
    const size = (await fs.stat(file)).size;
    return new TFRecordIndex(file, Float64Array.from(offsets), size);
  }

  /**
   * Loads `<file>.index`, or builds and saves it when absent or stale. A failed save throws,
   * unless `onSaveError` is given: then it gets the error and the index is used from memory
   * (data mounted read-only can still be read; the next open scans the shard again).
   */
  static async open(file: string, options: { onSaveError?: (err: NodeJS.ErrnoException) => void } = {}): Promise<TFRecordIndex> {
    const indexFile = `${file}.index`;
    const size = (await fs.stat(file).catch(() => undefined))?.size;
    if (size === undefined) throw new TFRecordError(file, 0, 'no such file');
    const saved = await fs.readFile(indexFile).catch(() => undefined);
    if (saved && saved.length >= 24 && saved.subarray(0, 8).equals(INDEX_MAGIC) && Number(saved.readBigUInt64LE(8)) === size) {
      const count = Number(saved.readBigUInt64LE(16));
      if (saved.length === 24 + 8 * count) {
        const offsets = new Float64Array(count);
        for (let i = 0; i < count; i++) offsets[i] = Number(saved.readBigUInt64LE(24 + 8 * i));
        return new TFRecordIndex(file, offsets, size);
      }
    }
    const built = await TFRecordIndex.build(file);
    try {
      await built.save(indexFile);
    } catch (err) {
      if (!options.onSaveError) throw err;
      options.onSaveError(err as NodeJS.ErrnoException);
    }
    return built;
  }

  async save(indexFile = `${this.file}.index`): Promise<void> {
    const out = Buffer.alloc(24 + 8 * this.count);
    INDEX_MAGIC.copy(out, 0);
    out.writeBigUInt64LE(BigInt(this.shardBytes), 8);
    out.writeBigUInt64LE(BigInt(this.count), 16);
    this.offsets.forEach((o, i) => out.writeBigUInt64LE(BigInt(o), 24 + 8 * i));
    await writeFileAtomically(indexFile, (h) => h.writeFile(out));
  }

  /** Reads record `i` (both CRCs verified). */
  async read(i: number, handle?: fs.FileHandle): Promise<Uint8Array> {
    if (!Number.isInteger(i) || i < 0 || i >= this.count) throw new RangeError(`${this.file} has ${this.count} records; there is no record ${i}`);
    const offset = this.offsets[i]!;
    const end = i + 1 < this.count ? this.offsets[i + 1]! : this.shardBytes;
    const own = handle ?? (await openForReading(this.file));
    try {
      const buf = Buffer.allocUnsafe(end - offset);
      const { bytesRead } = await own.read(buf, 0, buf.length, offset);
      if (bytesRead < buf.length) throw new TFRecordError(this.file, offset, 'truncated record (the file shrank since it was indexed)');
      const length = checkHeader(this.file, buf, offset);
      if (HEADER_BYTES + length + FOOTER_BYTES !== buf.length) throw new TFRecordError(this.file, offset, 'record length disagrees with the index (the file changed since it was indexed)');
      const data = buf.subarray(HEADER_BYTES, HEADER_BYTES + length);
      if (buf.readUInt32LE(HEADER_BYTES + length) !== maskedCrc32c(data)) throw new TFRecordError(this.file, offset, 'corrupt record data (data CRC mismatch)');
      return new Uint8Array(data);
    } finally {
      if (!handle) await own.close();
    }
  }
}
