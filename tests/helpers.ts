import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { prepare, type PrepareOptions } from '../src/data/prepare.js';
import type { BertConfig } from '../src/model/config.js';
import type { Batch } from '../src/batch.js';

export function tinyConfig(overrides: Partial<BertConfig> = {}): BertConfig {
  return {
    vocab_size: 40,
    hidden_size: 16,
    num_hidden_layers: 2,
    num_attention_heads: 2,
    intermediate_size: 32,
    hidden_act: 'gelu',
    max_position_embeddings: 16,
    type_vocab_size: 2,
    hidden_dropout_prob: 0,
    attention_probs_dropout_prob: 0,
    initializer_range: 0.02,
    ...overrides,
  };
}

/** A small deterministic generator for test data (not Math.random). */
export function lcg(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 4294967296;
  };
}

/** An MLM batch: ids in [5, vocab), trailing padding, ~25% of real positions as targets. */
export function mlmBatch(seed: number, batchSize: number, length: number, vocab: number): Batch {
  const rand = lcg(seed);
  const tokenIds = new Int32Array(batchSize * length);
  const segmentIds = new Int32Array(batchSize * length);
  const targets = new Int32Array(batchSize * length);
  for (let b = 0; b < batchSize; b++) {
    const used = length - (b % 3);
    for (let i = 0; i < used; i++) {
      const id = 5 + Math.floor(rand() * (vocab - 5));
      const k = b * length + i;
      tokenIds[k] = id;
      segmentIds[k] = i >= used / 2 ? 1 : 0;
      if (rand() < 0.25 || i === 1) {
        targets[k] = id;
        tokenIds[k] = 3; // [MASK]
      }
    }
  }
  return { batchSize, length, tokenIds, segmentIds, targets };
}

export interface ScriptResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs a compiled script in a fresh node process (the real CLI, not a mock); `input` goes to
 * its stdin. The coordinator and the worker log their human lines (PRETRAIN_LOG_FORMAT=text,
 * which `env` may override): stdout is no terminal here, which would make them log JSON.
 */
export function runScript(script: string, args: string[], options: { cwd?: string; input?: string | Uint8Array; timeout?: number; env?: Record<string, string> } = {}): Promise<ScriptResult> {
  return new Promise((resolve) => {
    const env = { ...process.env, PRETRAIN_LOG_FORMAT: 'text', ...options.env };
    const child = execFile(process.execPath, [script, ...args], { cwd: options.cwd, env, timeout: options.timeout ?? 60_000, maxBuffer: 1 << 26 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
    child.stdin!.end(options.input ?? '');
  });
}

/** The compiled `pretrain` CLI. */
export const PRETRAIN_CLI = fileURLToPath(new URL('../src/cli/pretrain.js', import.meta.url));

/** The sample corpus and its vocabulary, shipped in data/sample/. */
export const SAMPLE_CORPUS = fileURLToPath(new URL('../../data/sample/corpus.txt', import.meta.url));
export const SAMPLE_VOCAB = fileURLToPath(new URL('../../data/sample/vocab.txt', import.meta.url));

/** Writes the first `documents` documents of the sample corpus into `dir`: fast to prepare, still real text. */
export async function writeSampleSlice(dir: string, documents: number): Promise<string> {
  const docs = (await readFile(SAMPLE_CORPUS, 'utf8')).split('\n\n').slice(0, documents);
  const file = path.join(dir, `sample-${documents}.txt`);
  await writeFile(file, docs.join('\n\n') + '\n');
  return file;
}

/** prepare() options for mlm on one corpus file with the sample vocab, single-threaded; `extra` overrides. */
export function prepareOptions(corpus: string, out: string, extra: Partial<PrepareOptions> = {}): PrepareOptions {
  return { corpus: [corpus], vocab: SAMPLE_VOCAB, out, task: 'mlm', maxLength: 64, seed: 1, recordsPerShard: 10_000, documents: 'blank-line', lowerCase: true, force: false, workers: 1, ...extra };
}

/** MLM and seq2seq shards of the first 30 sample documents (max length 32) under `dir`: small, quick runs of real data. */
export async function prepareRunData(dir: string): Promise<{ mlm: string; seq2seq: string }> {
  const corpus = await writeSampleSlice(dir, 30);
  const data = { mlm: path.join(dir, 'data-mlm'), seq2seq: path.join(dir, 'data-seq2seq') };
  for (const task of ['mlm', 'seq2seq'] as const) await prepare(prepareOptions(corpus, data[task], { task, maxLength: 32, recordsPerShard: 100 }));
  return data;
}
