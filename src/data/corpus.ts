import { createReadStream, promises as fs } from 'node:fs';

export class CorpusError extends Error {
  override name = 'CorpusError';
}

/**
 * The lines of a UTF-8 text file, streamed (memory stays flat in the file size), without
 * line ends. Invalid UTF-8 stops with the file and the line.
 */
export async function* readLines(file: string): AsyncGenerator<string> {
  const stat = await fs.stat(file).catch((err: NodeJS.ErrnoException) => {
    throw new CorpusError(err.code === 'ENOENT' ? `corpus file ${file} does not exist` : `cannot read corpus file ${file}: ${err.message}`);
  });
  if (!stat.isFile()) throw new CorpusError(`corpus path ${file} is not a file`);
  yield* decodeLines(createReadStream(file, { highWaterMark: 1 << 20 }), `corpus file ${file}`);
}

/**
 * The lines of a stream of UTF-8 bytes (a file, stdin), without line ends (\n or \r\n) and
 * without a leading byte-order mark. Invalid UTF-8 is an error naming `name` and the line,
 * never replaced: replacement characters would pass silently into a vocabulary or shards.
 */
export async function* decodeLines(chunks: AsyncIterable<Uint8Array>, name: string): AsyncGenerator<string> {
  const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  let lineNo = 0; // lines yielded
  let lineStart = 0; // byte offset of the next line
  let pending: Buffer[] = []; // bytes of an unfinished line, from earlier chunks
  // whole lines are decoded at once (a newline byte never occurs inside a UTF-8 sequence);
  // only when that fails is each line decoded alone, to name the bad one
  const decode = (bytes: Buffer): string[] => {
    try {
      // stream mode is the fast path in Node 20; the flush after it rejects a line that ends inside a character
      return (decoder.decode(bytes, { stream: true }) + decoder.decode()).split('\n');
    } catch {
      let at = 0;
      for (let line = lineNo + 1; ; line++) {
        const end = bytes.indexOf(10, at) < 0 ? bytes.length : bytes.indexOf(10, at);
        try {
          decoder.decode(bytes.subarray(at, end));
        } catch {
          throw new CorpusError(`${name} is not valid UTF-8 at line ${line} (bytes ${lineStart + at} to ${lineStart + end}); convert it first, e.g. with iconv`);
        }
        at = end + 1;
      }
    }
  };
  let first = true;
  for await (const chunk of chunks) {
    const bytes = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const last = bytes.lastIndexOf(10);
    if (last < 0) {
      pending.push(bytes);
      continue;
    }
    const complete = bytes.subarray(0, last);
    const lines = decode(pending.length > 0 ? Buffer.concat([...pending, complete]) : complete);
    lineStart += (pending.length > 0 ? pending.reduce((n, p) => n + p.length, 0) : 0) + last + 1;
    pending = last + 1 < bytes.length ? [bytes.subarray(last + 1)] : [];
    if (first && lines[0]!.charCodeAt(0) === 0xfeff) lines[0] = lines[0]!.slice(1); // a byte-order mark is not text
    first = false;
    lineNo += lines.length;
    for (const line of lines) yield line.endsWith('\r') ? line.slice(0, -1) : line;
  }
  if (pending.length > 0) {
    const [line] = decode(Buffer.concat(pending));
    yield first && line!.charCodeAt(0) === 0xfeff ? line!.slice(1).replace(/\r$/, '') : line!.replace(/\r$/, '');
  }
}

export type DocumentFormat = 'blank-line' | 'line';

/**
 * A document is cut after this many characters, so a corpus without blank lines (one
 * sentence per line, no document breaks) still streams in bounded memory.
 */
export const MAX_DOCUMENT_CHARS = 1 << 20;

/**
 * Documents of a corpus: with `blank-line`, consecutive non-empty lines form a document
 * (one sentence per line) and blank lines separate documents; with `line`, every
 * non-empty line is a document. Whitespace-only lines count as blank. Documents longer
 * than `maxChars` are cut into several.
 */
export async function* readDocuments(file: string, format: DocumentFormat = 'blank-line', maxChars = MAX_DOCUMENT_CHARS): AsyncGenerator<string[]> {
  let doc: string[] = [];
  let chars = 0;
  for await (const line of readLines(file)) {
    const blank = line.trim() === '';
    if (format === 'line') {
      if (!blank) yield [line];
      continue;
    }
    if (blank || chars + line.length > maxChars) {
      if (doc.length > 0) yield doc;
      doc = [];
      chars = 0;
    }
    if (!blank) {
      doc.push(line);
      chars += line.length;
    }
  }
  if (doc.length > 0) yield doc;
}
