/**
 * HPACK (RFC 7541) for the data plane's HTTP/2. Decoding is hpack.js (peers such as nghttp2
 * use Huffman coding and the dynamic table); encoding writes every field as a literal
 * without indexing and without Huffman coding, which any decoder accepts and which keeps
 * the encoder stateless (our header blocks are a handful of short fields per call).
 */
import hpack from 'hpack.js';
import { H2Code, H2ProtocolError } from './frames.js';

export type HeaderList = Record<string, string>;

/** HPACK integer with an n-bit prefix (RFC 7541 section 5.1). */
function integer(value: number, prefixBits: number, firstByte: number, out: number[]): void {
  const max = (1 << prefixBits) - 1;
  if (value < max) {
    out.push(firstByte | value);
    return;
  }
  out.push(firstByte | max);
  value -= max;
  while (value >= 128) {
    out.push((value % 128) + 128);
    value = Math.floor(value / 128);
  }
  out.push(value);
}

function literal(text: string, out: number[]): void {
  const bytes = Buffer.from(text, 'latin1');
  integer(bytes.length, 7, 0x00, out); // H bit 0: no Huffman coding
  for (const b of bytes) out.push(b);
}

/**
 * Encodes a header list. Names must already be lower case (HTTP/2 requires it); pseudo
 * headers must come first in the list's order. `secret` names are sent as never-indexed
 * literals, so that no intermediary puts them in a compression table (the join token).
 */
export function encodeHeaders(headers: ReadonlyArray<readonly [string, string]>, secret: ReadonlySet<string> = new Set()): Buffer {
  const out: number[] = [];
  for (const [name, value] of headers) {
    integer(0, 4, secret.has(name) ? 0x10 : 0x00, out);
    literal(name, out);
    literal(value, out);
  }
  return Buffer.from(out);
}

/** One decoder per connection and direction: the dynamic table lives across header blocks. */
export class HeaderDecoder {
  readonly #decompressor = hpack.decompressor.create({ table: { maxSize: 4096 } });
  #error: Error | undefined;

  constructor(readonly maxListBytes: number) {
    this.#decompressor.on('error', (e) => (this.#error = e));
  }

  /** Decodes one complete header block; repeated names are joined with ', '. */
  decode(block: Buffer): HeaderList {
    this.#error = undefined;
    this.#decompressor.write(block);
    this.#decompressor.execute();
    const error = this.#error as Error | undefined; // set by the 'error' listener during execute()
    if (error) throw new H2ProtocolError(H2Code.COMPRESSION_ERROR, `a header block does not decode: ${error.message}`);
    const out: HeaderList = Object.create(null) as HeaderList; // a peer's header named 'constructor' is just a header
    let bytes = 0;
    for (let f = this.#decompressor.read(); f; f = this.#decompressor.read()) {
      bytes += f.name.length + f.value.length + 32;
      if (bytes > this.maxListBytes) throw new H2ProtocolError(H2Code.ENHANCE_YOUR_CALM, `a header list is over ${this.maxListBytes} bytes`);
      out[f.name] = f.name in out ? `${out[f.name]}, ${f.value}` : f.value;
    }
    return out;
  }
}
