/** The data plane's messages (proto/comm.proto), encoded and decoded with protobufjs only. */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

export const SERVICE = 'tfjs_pretrain.comm.v1.Comm';
export const PULL_PATH = `/${SERVICE}/Pull`;
export const STATUS_PATH = `/${SERVICE}/Status`;

export const Kind = { ALL_REDUCE: 1, BROADCAST: 2, ALL_GATHER: 3, REDUCE_SCATTER: 4, ALL_GATHER_SEGMENTS: 5 } as const;
export type KindCode = (typeof Kind)[keyof typeof Kind];
export const Encoding = { FLOAT32: 0, FLOAT16: 1, FLOAT64: 2 } as const;
export type EncodingCode = (typeof Encoding)[keyof typeof Encoding];

export interface PullRequest {
  runId: string;
  generation: number;
  sequence: number;
  fromRank: number;
  toRank: number;
  kind: number;
  elements: number;
  encoding: number;
  root: number;
  chunkElements: number;
}

export interface ChunkHeader {
  runId: string;
  generation: number;
  sequence: number;
  index: number;
  offset: number;
  encoding: number;
}

export interface Chunk extends ChunkHeader {
  data: Uint8Array;
}

export interface StatusRequest {
  runId: string;
  generation: number;
  fromRank: number;
}

export interface StatusReply {
  runId: string;
  generation: number;
  rank: number;
  sequence: number;
  active: boolean;
}

// dist/src/comm -> repo root, or src/comm -> repo root
const PROTO_CANDIDATES = [new URL('../../../proto/comm.proto', import.meta.url), new URL('../../proto/comm.proto', import.meta.url)];

interface Types {
  pullRequest: protobuf.Type;
  chunk: protobuf.Type;
  statusRequest: protobuf.Type;
  statusReply: protobuf.Type;
}
let types: Types | undefined;

function load(): Types {
  if (!types) {
    const file = PROTO_CANDIDATES.find((u) => existsSync(u));
    if (!file) throw new Error('proto/comm.proto is missing from the installation');
    const root = protobuf.loadSync(fileURLToPath(file));
    const t = (name: string): protobuf.Type => root.lookupType(`tfjs_pretrain.comm.v1.${name}`);
    types = { pullRequest: t('PullRequest'), chunk: t('Chunk'), statusRequest: t('StatusRequest'), statusReply: t('StatusReply') };
  }
  return types;
}

/** Thrown for bytes that are not a valid message of the expected type. */
export class DecodeError extends Error {
  override name = 'DecodeError';
}

const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, enums: Number, defaults: true };

function decode<T>(type: protobuf.Type, bytes: Uint8Array): T {
  let obj: Record<string, unknown>;
  try {
    obj = type.toObject(type.decode(bytes), TO_OBJECT);
  } catch (e) {
    throw new DecodeError(`malformed ${type.name}: ${(e as Error).message}`);
  }
  for (const [k, v] of Object.entries(obj)) {
    if (typeof v === 'number' && !Number.isSafeInteger(v) && !Number.isNaN(v)) throw new DecodeError(`${type.name}.${k} is out of range`);
  }
  return obj as T;
}

const encode = (type: protobuf.Type, value: object): Uint8Array => type.encode(type.fromObject(value)).finish();

export const encodePullRequest = (m: PullRequest): Uint8Array => encode(load().pullRequest, m);
export const decodePullRequest = (b: Uint8Array): PullRequest => decode(load().pullRequest, b);
export const encodeStatusRequest = (m: StatusRequest): Uint8Array => encode(load().statusRequest, m);
export const decodeStatusRequest = (b: Uint8Array): StatusRequest => decode(load().statusRequest, b);
export const encodeStatusReply = (m: StatusReply): Uint8Array => encode(load().statusReply, m);
export const decodeStatusReply = (b: Uint8Array): StatusReply => decode(load().statusReply, b);
export const decodeChunk = (b: Uint8Array): Chunk => decode(load().chunk, b);
/** A whole Chunk in one buffer (tests and stock-peer interop; the data path uses chunkPrefix). */
export const encodeChunk = (m: Chunk): Uint8Array => encode(load().chunk, m);

const DATA_TAG = (16 << 3) | 2; // field 16, length-delimited: two varint bytes 0x82 0x01
const PAD_TAG = (15 << 3) | 2;

/**
 * The header of a Chunk from the message's first bytes, and where its data field's payload
 * starts: undefined when the data field's length is not among those bytes (the message
 * must then be decoded whole). The header fields are decoded exactly as decodeChunk would.
 */
export function decodeChunkHead(head: Uint8Array): { header: ChunkHeader; dataOffset: number; dataBytes: number } | undefined {
  const reader = protobuf.Reader.create(head);
  try {
    while (reader.pos < reader.len) {
      const start = reader.pos;
      const tag = reader.uint32();
      if (tag === DATA_TAG) {
        const dataBytes = reader.uint32();
        const { data: _, ...header } = decode<Chunk>(load().chunk, head.subarray(0, start));
        return { header, dataOffset: reader.pos, dataBytes };
      }
      reader.skipType(tag & 7);
    }
  } catch (e) {
    if (e instanceof DecodeError) throw e;
  }
  return undefined; // the head ended before the data field (protobufjs throws RangeError there)
}

function varint(n: number, out: number[]): void {
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
}

/**
 * Everything of a gRPC-framed Chunk message except its payload: the 5-byte gRPC prefix,
 * the header fields, a pad field that puts the payload at a 4-byte-aligned offset of the
 * message (so the receiver can view it as floats without a copy), and the data field's
 * tag and length. The payload bytes are written after it as they are, without a copy.
 */
export function chunkPrefix(header: ChunkHeader, dataBytes: number): Buffer {
  const head = encode(load().chunk, header);
  const tail: number[] = [];
  varint(DATA_TAG, tail);
  varint(dataBytes, tail);
  const misalign = (head.length + tail.length) % 4;
  // a pad field is tag (1) + length (1) + k filler bytes; k = 1, 0, 3 for misalignment 1, 2, 3
  const k = [1, 0, 3][misalign - 1] ?? 0;
  const pad = misalign === 0 ? [] : [PAD_TAG, k, ...new Array<number>(k).fill(0)];
  const messageBytes = head.length + pad.length + tail.length + dataBytes;
  const out = Buffer.allocUnsafe(5 + head.length + pad.length + tail.length);
  out[0] = 0; // not compressed
  out.writeUInt32BE(messageBytes, 1);
  out.set(head, 5);
  out.set(pad, 5 + head.length);
  out.set(tail, 5 + head.length + pad.length);
  return out;
}
