/**
 * bench:decode: tokens/s of batched beam search with the key/value cache against recomputing
 * the whole prefix at every step, on a unilm model (default L4-H256, beam 4, source 64
 * tokens, 32 generated, 8 inputs per batch). Prints a table, the command to reproduce, and
 * as its last line one JSON object.
 */
import { Command, Option } from 'commander';
import * as tf from '@tensorflow/tfjs-core';
import { type BackendChoice, selectBackend } from '../src/backend/index.js';
import { FullRecomputeScorer, KvCacheScorer } from '../src/decode/incremental.js';
import type { Scorer } from '../src/decode/scorer.js';
import { beamSearch, type Hypothesis } from '../src/decode/search.js';
import { buildTransformer, disposeTransformer } from '../src/model/build.js';
import { presetConfig } from '../src/model/config.js';
import { TrieBuilder } from '../src/decode/trie.js';
import { TrieConstraint } from '../src/decode/trie-constraint.js';
import { median, table } from './common.js';
import { benchTrie, printTrieBench } from './trie.js';

const [CLS, SEP, FIRST_WORD_ID] = [2, 3, 5];

interface Options {
  backend: BackendChoice;
  preset: string;
  vocab: number;
  source: number;
  generate: number;
  batch: number;
  beam: number;
  repeats: number;
  trieKeys: number;
  constraintKeys: number;
}

/** The figures of the last line. The trie's are filled in by its own section (null until then). */
interface DecodeBenchResults {
  setup: Record<string, string | number>;
  kvCacheTokensPerSec: number;
  fullRecomputeTokensPerSec: number;
  kvCacheSpeedup: number;
  kvCacheMsPerStep: number;
  fullRecomputeMsPerStep: number;
  /** Whether both found the same hypotheses. */
  sameOutputs: boolean;
  trieBytesPerKey: number | null;
  trieBuildKeysPerSec: number | null;
  trieLoadMs: number | null;
  constrainedTokensPerSec: number | null;
}

const program = new Command('bench:decode')
  .addOption(new Option('--backend <name>', 'tfjs backend').choices(['auto', 'tensorflow', 'wasm', 'cpu']).default('wasm'))
  .option('--preset <L-H>', 'model size', 'L4-H256')
  .addOption(new Option('--vocab <n>', 'vocabulary size (21128 = Google Chinese BERT)').default(21128).argParser(Number))
  .addOption(new Option('--source <n>', 'source tokens, [CLS] and [SEP] included').default(64).argParser(Number))
  .addOption(new Option('--generate <n>', 'tokens generated per input').default(32).argParser(Number))
  .addOption(new Option('--batch <n>', 'inputs per batch').default(8).argParser(Number))
  .addOption(new Option('--beam <n>', 'beams per input').default(4).argParser(Number))
  .addOption(new Option('--repeats <n>', 'timed runs with the cache (median)').default(3).argParser(Number))
  .addOption(new Option('--trie-keys <n>', 'keys of the prefix tree measured for size, build and load (bench:trie)').default(1_000_000).argParser(Number))
  .addOption(new Option('--constraint-keys <n>', 'random keys of 4-16 tokens of the tree that constrains the beam search').default(100_000).argParser(Number))
  .parse();
const opts = program.opts<Options>();

function sources(): number[][] {
  let state = 12345;
  const rand = (): number => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 4294967296;
  };
  return Array.from({ length: opts.batch }, () => [CLS, ...Array.from({ length: opts.source - 2 }, () => FIRST_WORD_ID + Math.floor(rand() * (opts.vocab - FIRST_WORD_ID))), SEP]);
}

/** One batched beam search; every input runs exactly `generate` steps ([SEP] only at the last). */
function decode(scorer: Scorer): { seconds: number; outputs: Hypothesis[][] } {
  const started = performance.now();
  const outputs = beamSearch(scorer, { endToken: SEP, beams: opts.beam, maxLength: opts.generate, minLength: opts.generate - 1, lengthPenalty: 0 });
  const seconds = (performance.now() - started) / 1000;
  scorer.dispose();
  return { seconds, outputs };
}

const backend = await selectBackend(opts.backend);
const model = buildTransformer(presetConfig(opts.preset, opts.vocab, { hidden_dropout_prob: 0, attention_probs_dropout_prob: 0 }), { application: 'unilm', withMlm: true, seed: 1 });
const inputs = sources();
const tokens = opts.batch * opts.generate;
console.error(`bench:decode on ${backend.description}: ${opts.preset} unilm, vocab ${opts.vocab}, ${opts.batch} inputs x beam ${opts.beam}, source ${opts.source}, ${opts.generate} generated`);
decode(new KvCacheScorer(model, { inputs: inputs.slice(0, 2) })); // warm-up: kernels, weight packing
const cachedRuns: number[] = [];
let cachedOutputs: Hypothesis[][] = [];
for (let i = 0; i < opts.repeats; i++) {
  const run = decode(new KvCacheScorer(model, { inputs }));
  cachedRuns.push(run.seconds);
  cachedOutputs = run.outputs;
}
const full = decode(new FullRecomputeScorer(model, { inputs }));
const cachedSeconds = median(cachedRuns);
const sameOutputs = JSON.stringify(full.outputs.map((hs) => hs.map((h) => h.tokens))) === JSON.stringify(cachedOutputs.map((hs) => hs.map((h) => h.tokens)));

// beam search under a prefix tree of random keys in the model's vocabulary: tokens/s counts
// the tokens of each input's best key and its [SEP]
const builder = new TrieBuilder({ vocabSize: opts.vocab, vocabHash: 'bench' });
let keyState = 777;
const next = (): number => (keyState = (Math.imul(keyState, 1664525) + 1013904223) >>> 0) / 4294967296;
for (let k = 0; k < opts.constraintKeys; k++) {
  const n = 4 + Math.floor(next() * 13);
  builder.add(Array.from({ length: n }, () => FIRST_WORD_ID + Math.floor(next() * (opts.vocab - FIRST_WORD_ID))), `Q${k}`);
}
const constraint = new TrieConstraint(builder.build());
const constrainedStart = performance.now();
const constrainedScorer = new KvCacheScorer(model, { inputs });
const constrained = beamSearch(constrainedScorer, { endToken: SEP, beams: opts.beam, maxLength: 17, lengthPenalty: 1, constraint });
const constrainedSeconds = (performance.now() - constrainedStart) / 1000;
constrainedScorer.dispose();
const constrainedTokens = constrained.reduce((n, hs) => n + (hs[0] ? hs[0].tokens.length + 1 : 0), 0);
const allKeys = constrained.every((hs) => hs.every((h) => h.ended && constraint.trie.lookup(h.tokens).length > 0));
disposeTransformer(model);
const trieBench = await benchTrie({ keys: opts.trieKeys, vocabSize: opts.vocab });

const results: DecodeBenchResults = {
  setup: { backend: backend.name, model: opts.preset, application: 'unilm', vocab: opts.vocab, batch: opts.batch, beam: opts.beam, sourceTokens: opts.source, generatedTokens: opts.generate },
  kvCacheTokensPerSec: tokens / cachedSeconds,
  fullRecomputeTokensPerSec: tokens / full.seconds,
  kvCacheSpeedup: full.seconds / cachedSeconds,
  kvCacheMsPerStep: (cachedSeconds * 1000) / opts.generate,
  fullRecomputeMsPerStep: (full.seconds * 1000) / opts.generate,
  sameOutputs,
  ...trieBench.figures,
  constrainedTokensPerSec: constrainedTokens / constrainedSeconds,
};
table(
  `Beam search, ${opts.preset} unilm on ${backend.name}: ${opts.batch} inputs x beam ${opts.beam}, source ${opts.source} tokens, ${opts.generate} generated (tokens/s counts each input's tokens once)`,
  ['scorer', 'ms/step', 'tokens/s', 'runs'],
  [
    ['key/value cache', results.kvCacheMsPerStep.toFixed(1), results.kvCacheTokensPerSec.toFixed(1), opts.repeats],
    ['full recompute', results.fullRecomputeMsPerStep.toFixed(1), results.fullRecomputeTokensPerSec.toFixed(1), 1],
  ],
);
console.log(`\nbeam search under a prefix tree of ${opts.constraintKeys} random keys: ${results.constrainedTokensPerSec!.toFixed(1)} tokens/s (${constrainedTokens} tokens in ${constrainedSeconds.toFixed(2)} s); every output a key: ${allKeys ? 'yes' : 'NO'}\n`);
printTrieBench(trieBench);
console.log(`\ncache speedup ${results.kvCacheSpeedup.toFixed(1)}x; same hypotheses: ${sameOutputs ? 'yes' : 'no'}; tensors left: ${tf.memory().numTensors}`);
console.log(`\nreproduce: npm run bench:decode -- ${process.argv.slice(2).join(' ')}`.trimEnd());
console.log(JSON.stringify(results));
