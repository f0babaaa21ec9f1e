import { createReadStream, promises as fs } from 'node:fs';

export class CorpusError extends Error {
  override name = 'CorpusError';
}

/**
 * The lines of a UTF-8 text file, streamed (memory stays flat in the file size), without
 * line ends. Invalid UTF-8 stops with the file and the byte offset of the bad chunk.
 */
export async function* readLines(file: string): AsyncGenerator<string> {
  const stat = await fs.stat(file).catch((err: NodeJS.ErrnoException) => {
    throw new CorpusError(err.code === 'ENOENT' ? `corpus file ${file} does not exist` : `cannot read corpus file ${file}: ${err.message}`);
  });
  if (!stat.isFile()) throw new CorpusError(`corpus path ${file} is not a file`);
  const decoder = new TextDecoder('utf-8', { fatal: true });
  let carry = '';
  let offset = 0;
  let first = true;
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
    const bytes = chunk as Buffer;
    let text: string;
    try {
      text = decoder.decode(bytes, { stream: true });
    } catch {
      throw new CorpusError(`corpus file ${file} is not valid UTF-8 (in the bytes from offset ${offset} to ${offset + bytes.length}); convert it first, e.g. with iconv`);
    }
    offset += bytes.length;
    if (first && text.charCodeAt(0) === 0xfeff) text = text.slice(1); // a byte-order mark is not text
    first = false;
    const lines = (carry + text).split('\n');
    carry = lines.pop()!;
    for (const line of lines) yield line.endsWith('\r') ? line.slice(0, -1) : line;
  }
  try {
    carry += decoder.decode();
  } catch {
    throw new CorpusError(`corpus file ${file} is not valid UTF-8 (it ends inside a character)`);
  }
  if (carry) yield carry.endsWith('\r') ? carry.slice(0, -1) : carry;
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
