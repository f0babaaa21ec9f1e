/**
 * Classification data: single sentences or sentence pairs with string labels, from TSV
 * (`text<TAB>label`, `text_a<TAB>text_b<TAB>label`) or JSON lines
 * (`{"text"|"text_a": ..., "text_b"?: ..., "label": ...}`). Every problem names the file and
 * line. Labels are strings, mapped to ids in sorted order (saved with the model).
 */
import { readFile } from 'node:fs/promises';
import type { Batch } from '../batch.js';
import type { BertTokenizer } from '../data/tokenizer.js';

/** Bad classification data (a malformed line, an unknown label): exit 2, the message names file:line. */
export class FinetuneDataError extends Error {
  override name = 'FinetuneDataError';
}

export interface Example {
  readonly textA: string;
  readonly textB?: string;
  /** Absent for inputs to predict. */
  readonly label?: string;
  /** `file:line`, for messages. */
  readonly where: string;
}

export interface ExampleSet {
  readonly file: string;
  readonly examples: Example[];
  /** Sentence pairs (text_a, text_b) rather than single sentences. */
  readonly pairs: boolean;
}

function isJsonLines(file: string): boolean {
  return /\.(jsonl|ndjson|json)$/i.test(file);
}

/** One input line (TSV fields or a JSON object) as an example; `labelled`: the line must end with a label. */
export function parseExampleLine(line: string, where: string, labelled: boolean, json: boolean): Example {
  if (json || line.trimStart().startsWith('{')) {
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch (err) {
      throw new FinetuneDataError(`${where}: not valid JSON (${(err as Error).message})`);
    }
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new FinetuneDataError(`${where}: expected a JSON object {"text" or "text_a", "text_b"?, "label"}`);
    const o = raw as Record<string, unknown>;
    const textA = o['text'] ?? o['text_a'];
    const textB = o['text_b'];
    const label = o['label'];
    if (typeof textA !== 'string' || textA.trim() === '') throw new FinetuneDataError(`${where}: "text" (or "text_a") must be a non-empty string`);
    if (textB !== undefined && (typeof textB !== 'string' || textB.trim() === '')) throw new FinetuneDataError(`${where}: "text_b" must be a non-empty string when present`);
    if (labelled && (typeof label !== 'string' && typeof label !== 'number')) throw new FinetuneDataError(`${where}: "label" is missing (a string or a number)`);
    const text = label === undefined ? undefined : String(label);
    if (labelled && text!.trim() === '') throw new FinetuneDataError(`${where}: "label" is empty`);
    return { textA, ...(textB === undefined ? {} : { textB: textB as string }), ...(labelled ? { label: text! } : {}), where };
  }
  const fields = line.split('\t');
  const expected = labelled ? 'text<TAB>label or text_a<TAB>text_b<TAB>label' : 'text or text_a<TAB>text_b';
  const count = fields.length - (labelled ? 1 : 0);
  if (count !== 1 && count !== 2) {
    throw new FinetuneDataError(`${where}: expected ${labelled ? '2 or 3' : '1 or 2'} tab-separated fields (${expected}), got ${fields.length}`);
  }
  const texts = fields.slice(0, count);
  const empty = texts.findIndex((t) => t.trim() === '');
  if (empty >= 0) throw new FinetuneDataError(`${where}: field ${empty + 1} (${count === 1 ? 'text' : empty === 0 ? 'text_a' : 'text_b'}) is empty`);
  const label = labelled ? fields[count]!.trim() : undefined;
  if (labelled && label === '') throw new FinetuneDataError(`${where}: the label (field ${count + 1}) is empty`);
  return { textA: texts[0]!, ...(count === 2 ? { textB: texts[1]! } : {}), ...(label === undefined ? {} : { label }), where };
}

/** Checks that all examples have the same shape (all single sentences or all pairs); returns which. */
export function checkShape(examples: readonly Example[], source: string): boolean {
  const first = examples[0];
  if (!first) throw new FinetuneDataError(`${source} has no examples (only blank lines)`);
  const pairs = first.textB !== undefined;
  const odd = examples.find((e) => (e.textB !== undefined) !== pairs);
  if (odd) {
    throw new FinetuneDataError(`${odd.where}: a ${pairs ? 'single sentence' : 'sentence pair'}, but ${first.where} is a ${pairs ? 'sentence pair' : 'single sentence'}; a file holds one kind`);
  }
  return pairs;
}

/** Reads a labelled TSV or JSON-lines file (by extension: .jsonl, .ndjson, .json are JSON lines). */
export async function readExamples(file: string): Promise<ExampleSet> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new FinetuneDataError(code === 'ENOENT' ? `${file} does not exist` : code === 'EISDIR' ? `${file} is a folder; give a .tsv or .jsonl file` : `cannot read ${file}: ${(err as Error).message}`);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new FinetuneDataError(`${file} is not valid UTF-8`);
  }
  const json = isJsonLines(file);
  const examples: Example[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '') return;
    examples.push(parseExampleLine(line, `${file}:${i + 1}`, true, json));
  });
  return { file, examples, pairs: checkShape(examples, file) };
}

/** The label names in id order: the training set's distinct labels, sorted. */
export function labelsOf(train: ExampleSet): string[] {
  return [...new Set(train.examples.map((e) => e.label!))].sort();
}

/**
 * The label names, after checking the sets against the training set: the same kind (single
 * sentences or pairs), at least 2 labels, and no label the training set lacks.
 */
export function checkSets(train: ExampleSet, others: readonly ExampleSet[]): string[] {
  for (const set of others) {
    if (set.pairs !== train.pairs) {
      throw new FinetuneDataError(`${set.file} holds ${set.pairs ? 'sentence pairs' : 'single sentences'} but ${train.file} holds ${train.pairs ? 'sentence pairs' : 'single sentences'}`);
    }
  }
  const labels = labelsOf(train);
  if (labels.length < 2) throw new FinetuneDataError(`${train.file} has only one label (${JSON.stringify(labels[0])}); a classifier needs at least 2`);
  for (const set of others) labelIds(set, labels, train.file);
  return labels;
}

/** Label ids of a labelled set; a label the training data lacks is named with its file:line. */
export function labelIds(set: ExampleSet, labels: readonly string[], trainFile: string): Int32Array {
  const index = new Map(labels.map((l, i) => [l, i]));
  const unknown = set.examples.filter((e) => !index.has(e.label!));
  if (unknown.length > 0) {
    const first = unknown[0]!;
    const names = [...new Set(unknown.map((e) => JSON.stringify(e.label)))];
    throw new FinetuneDataError(
      `${first.where}: label ${JSON.stringify(first.label)} does not occur in the training data ${trainFile} (its labels: ${labels.map((l) => JSON.stringify(l)).join(', ')}); ` +
        `${unknown.length} line(s) of ${set.file} have labels unseen in training: ${names.slice(0, 5).join(', ')}${names.length > 5 ? ', ...' : ''}`,
    );
  }
  return Int32Array.from(set.examples, (e) => index.get(e.label!)!);
}

export interface EncodedExample {
  readonly ids: number[];
  readonly segmentIds: number[];
}

export function encodeExamples(examples: readonly Example[], tokenizer: BertTokenizer, maxLength: number): EncodedExample[] {
  return examples.map((e) => {
    const { ids, segmentIds } = tokenizer.encode(e.textA, e.textB, maxLength);
    return { ids, segmentIds };
  });
}

/**
 * The examples at `order` as a batch padded to its longest; with labels, each sample's
 * target at its first position is its label id + 1 (0 means no target), the rest 0.
 */
export function classificationBatch(encoded: readonly EncodedExample[], order: readonly number[], labels?: Int32Array): Batch {
  const length = Math.max(...order.map((i) => encoded[i]!.ids.length));
  const batchSize = order.length;
  const tokenIds = new Int32Array(batchSize * length);
  const segmentIds = new Int32Array(batchSize * length);
  const targets = new Int32Array(batchSize * length);
  order.forEach((i, b) => {
    const e = encoded[i]!;
    tokenIds.set(e.ids, b * length);
    segmentIds.set(e.segmentIds, b * length);
    if (labels) targets[b * length] = labels[i]! + 1;
  });
  return { batchSize, length, tokenIds, segmentIds, targets };
}
