import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { selectBackend } from '../src/backend/index.js';
import type { DecodeConstraint } from '../src/decode/constraint.js';
import { FullRecomputeScorer, KvCacheScorer } from '../src/decode/incremental.js';
import type { Scorer } from '../src/decode/scorer.js';
import { beamSearch, type Hypothesis, sample } from '../src/decode/search.js';
import { TrieBuilder } from '../src/decode/trie.js';
import { TrieConstraint } from '../src/decode/trie-constraint.js';
import { buildTransformer, disposeTransformer } from '../src/model/build.js';
import { tinyConfig } from './helpers.js';

const [A, B, END, C, D] = [1, 2, 3, 4, 5];
const VOCAB = 6;

type Table = (input: number, prefix: readonly number[]) => Partial<Record<number, number>>;

/** A model whose next-token probabilities are set by hand, as a function of the input and the prefix. */
class TableScorer implements Scorer {
  readonly vocabSize = VOCAB;
  private prefixes: { input: number; tokens: number[] }[];
  calls = 0;
  constructor(inputs: number, private readonly table: Table) {
    this.prefixes = Array.from({ length: inputs }, (_, input) => ({ input, tokens: [] }));
  }
  get rows(): number {
    return this.prefixes.length;
  }
  step(last: Int32Array | null): Float32Array {
    this.calls++;
    if (last) this.prefixes.forEach((p, i) => p.tokens.push(last[i]!));
    const out = new Float32Array(this.rows * VOCAB).fill(-Infinity);
    this.prefixes.forEach((p, r) => {
      for (const [t, prob] of Object.entries(this.table(p.input, p.tokens))) out[r * VOCAB + Number(t)] = Math.log(prob!);
    });
    return out;
  }
  select(parents: Int32Array): void {
    this.prefixes = Array.from(parents, (p) => ({ input: this.prefixes[p]!.input, tokens: [...this.prefixes[p]!.tokens] }));
  }
  dispose(): void {}
}

/**
 * Input 0: greedy takes A (0.5) but B (0.4) then [SEP] (0.9) is the best sequence. Input 1:
 * C C [SEP] most likely. Every sequence of two tokens ends.
 */
const table: Table = (input, prefix) => {
  if (input === 1) return prefix.length === 0 ? { [C]: 0.9, [D]: 0.05, [END]: 0.05 } : prefix.length === 1 ? { [C]: 0.8, [D]: 0.15, [END]: 0.05 } : { [END]: 1 };
  if (prefix.length === 0) return { [A]: 0.5, [B]: 0.4, [END]: 0.1 };
  if (prefix.length === 1) return prefix[0] === A ? { [A]: 0.35, [B]: 0.3, [C]: 0.25, [END]: 0.1 } : { [END]: 0.9, [A]: 0.05, [C]: 0.05 };
  return { [END]: 1 };
};

function summary(hs: Hypothesis[]): [number[], number, boolean][] {
  return hs.map((h) => [h.tokens, Math.round(Math.exp(h.logProb) * 1e6) / 1e6, h.ended]);
}

describe('beam search on a model set by hand', () => {
  it('returns the known best sequences in order, with their probabilities (n-best, no length penalty)', () => {
    const out = beamSearch(new TableScorer(2, table), { endToken: END, beams: 4, numReturn: 4, lengthPenalty: 0 });
    assert.deepEqual(summary(out[0]!), [[[B], 0.36, true], [[A, A], 0.175, true], [[A, B], 0.15, true], [[A, C], 0.125, true]]);
    assert.deepEqual(summary(out[1]!).slice(0, 3), [[[C, C], 0.72, true], [[C, D], 0.135, true], [[], 0.05, true]]);
    for (const h of out[0]!) assert.equal(h.score, h.logProb);
  });

  it('one beam is greedy; several inputs in a batch decode as each alone', () => {
    assert.deepEqual(summary(beamSearch(new TableScorer(1, table), { endToken: END, beams: 1, lengthPenalty: 0 })[0]!), [[[A, A], 0.175, true]]);
    const batched = beamSearch(new TableScorer(2, table), { endToken: END, beams: 3, numReturn: 3 });
    const alone = beamSearch(new TableScorer(1, (_, p) => table(1, p)), { endToken: END, beams: 3, numReturn: 3 });
    assert.deepEqual(batched[1], alone[0]);
  });

  it('length penalty divides the log-probability by the length (the [SEP] counted)', () => {
    const out = beamSearch(new TableScorer(1, table), { endToken: END, beams: 4, numReturn: 3, lengthPenalty: 1 })[0]!;
    assert.deepEqual(out.map((h) => h.tokens), [[B], [A, A], [A, B]]);
    assert.ok(Math.abs(out[0]!.score - Math.log(0.36) / 2) < 1e-6);
    assert.ok(Math.abs(out[1]!.score - Math.log(0.175) / 3) < 1e-6);
    // a strong penalty for short outputs: a negative one favours them
    const short = beamSearch(new TableScorer(1, table), { endToken: END, beams: 4, numReturn: 2, lengthPenalty: -3 })[0]!;
    assert.deepEqual(short.map((h) => h.tokens), [[], [B]]);
  });

  it('minLength forbids an earlier [SEP]; maxLength returns open beams as not ended', () => {
    const min = beamSearch(new TableScorer(1, table), { endToken: END, beams: 4, numReturn: 2, lengthPenalty: 0, minLength: 2 })[0]!;
    assert.deepEqual(summary(min), [[[A, A], 0.175, true], [[A, B], 0.15, true]]);
    const max = beamSearch(new TableScorer(1, table), { endToken: END, beams: 4, numReturn: 3, lengthPenalty: 0, maxLength: 2 })[0]!;
    assert.deepEqual(summary(max), [[[B], 0.36, true], [[A, A], 0.175, false], [[A, B], 0.15, false]]);
  });

  it('ends: a hypothesis ends at its n-th [SEP]; earlier ones are ordinary tokens', () => {
    const seps: Table = (_, p) => (p.length < 3 ? { [END]: 0.6, [A]: 0.4 } : { [END]: 1 });
    const out = beamSearch(new TableScorer(1, seps), { endToken: END, beams: 2, lengthPenalty: 0, ends: 2 })[0]!;
    assert.deepEqual(summary(out), [[[END], 0.36, true]]);
  });

  it('a constraint: only allowed tokens, renormalized; [SEP] only where it may end; refused tokens drop the beam', () => {
    // keys A and B C (a prefix tree); D is listed as allowed but refused by advance
    const keys = [[A], [B, C], [D]];
    const constraint: DecodeConstraint<number[]> = {
      start: () => [],
      allowed: (s) => Int32Array.from(new Set(keys.filter((k) => k.length > s.length && s.every((t, i) => k[i] === t)).map((k) => k[s.length]!))),
      advance: (s, t) => (t === D ? undefined : [...s, t]),
      canEnd: (s) => keys.some((k) => k.length === s.length && k.every((t, i) => s[i] === t)),
    };
    const out = beamSearch(new TableScorer(1, table), { endToken: END, beams: 4, numReturn: 2, lengthPenalty: 0, constraint })[0]!;
    assert.deepEqual(out.map((h) => h.tokens), [[A], [B, C]]);
    assert.ok(Math.abs(Math.exp(out[0]!.logProb) - 0.5 / 0.9) < 1e-6, `renormalized among A and B: ${Math.exp(out[0]!.logProb)}`);
    assert.ok(Math.abs(Math.exp(out[1]!.logProb) - 0.4 / 0.9) < 1e-6);
    // sampling keeps to the keys too
    for (const s of sample(new TableScorer(1, table), { endToken: END, numSamples: 20, seed: 3, constraint })[0]!) assert.ok([[A], [B, C]].some((k) => k.join() === s.tokens.join()), s.tokens.join());
  });
});

describe('beam search under the real prefix tree', () => {
  it('a key that is a prefix of a longer key decodes (it may end where the longer key goes on); every output is a key', () => {
    // keys A B and A B C: after A B the tree allows C and the end
    const builder = new TrieBuilder({ vocabSize: VOCAB, vocabHash: 'test' });
    builder.add([A, B], 'short');
    builder.add([A, B, C], 'long');
    const constraint = new TrieConstraint(builder.build());
    // the model prefers to end after A B (0.7) over going on to C (0.3)
    const prefersShort: Table = (_, prefix) => (prefix.length === 0 ? { [A]: 0.6, [B]: 0.4 } : prefix.length === 1 ? { [B]: 0.9, [C]: 0.1 } : prefix.length === 2 ? { [END]: 0.7, [C]: 0.3 } : { [END]: 1 });
    const out = beamSearch(new TableScorer(1, prefersShort), { endToken: END, beams: 3, numReturn: 2, lengthPenalty: 0, constraint })[0]!;
    assert.deepEqual(out.map((h) => h.tokens), [[A, B], [A, B, C]]);
    assert.ok(out.every((h) => h.ended));
    const node = (tokens: number[]) => tokens.reduce<number | undefined>((n, t) => (n === undefined ? undefined : constraint.advance(n, t)), constraint.start());
    assert.deepEqual(constraint.valuesAt(node(out[0]!.tokens)!), ['short']);
    assert.deepEqual(constraint.valuesAt(node(out[1]!.tokens)!), ['long']);
  });
});

const flat: Table = (_, prefix) => (prefix.length === 0 ? { [A]: 0.3, [B]: 0.25, [C]: 0.2, [D]: 0.15, [END]: 0.1 } : { [END]: 1 });

function firstTokens(options: Parameters<typeof sample>[1], n = 400): Map<number, number> {
  const counts = new Map<number, number>();
  for (const s of sample(new TableScorer(1, flat), { numSamples: n, ...options })[0]!) counts.set(s.tokens[0] ?? END, (counts.get(s.tokens[0] ?? END) ?? 0) + 1);
  return counts;
}

describe('sampling', () => {
  it('is reproducible by seed, the same batched or alone, and differs with the seed', () => {
    const run = (seed: number, inputs = 2): Hypothesis[][] => sample(new TableScorer(inputs, flat), { endToken: END, numSamples: 8, seed });
    assert.deepEqual(run(5), run(5));
    assert.deepEqual(run(5)[0], run(5, 1)[0]);
    assert.notDeepEqual(run(5)[0]!.map((h) => h.tokens), run(6)[0]!.map((h) => h.tokens));
    const one = run(5)[0]![0]!;
    assert.equal(one.score, one.logProb);
  });

  it('respects top-k and top-p, and draws in proportion within them', () => {
    const k2 = firstTokens({ endToken: END, topK: 2, seed: 1 });
    assert.deepEqual([...k2.keys()].sort(), [A, B]);
    assert.ok(Math.abs(k2.get(A)! / 400 - 0.3 / 0.55) < 0.08, `A drawn ${k2.get(A)} of 400`);
    assert.deepEqual([...firstTokens({ endToken: END, topP: 0.5, seed: 2 }).keys()].sort(), [A, B]);
    assert.deepEqual([...firstTokens({ endToken: END, topP: 0.3, seed: 2 }).keys()], [A]);
    assert.deepEqual([...firstTokens({ endToken: END, topP: 0.56, seed: 2 }).keys()].sort(), [A, B, C]);
    assert.deepEqual([...firstTokens({ endToken: END, topK: 4, topP: 0.9, seed: 2 }).keys()].sort(), [A, B, C, D]);
    assert.equal(firstTokens({ endToken: END, seed: 3 }).size, 5, 'without limits every token appears');
    assert.deepEqual([...firstTokens({ endToken: END, temperature: 0.01, seed: 4 }, 50).keys()], [A], 'a low temperature is greedy');
    assert.throws(() => sample(new TableScorer(1, flat), { endToken: END, topP: 0 }), /topP must be in \(0, 1\]/);
  });

  it('scores a sample with the model log-probabilities, before temperature', () => {
    const [s] = sample(new TableScorer(1, flat), { endToken: END, numSamples: 1, seed: 1, temperature: 2 })[0]!;
    const expected = { [A]: 0.3, [B]: 0.25, [C]: 0.2, [D]: 0.15 }[s!.tokens[0]!] ?? 0.1;
    assert.ok(Math.abs(Math.exp(s!.logProb) - expected) < 1e-6);
  });
});

describe('beam search over the model', () => {
  it('the cached scorer finds what the full recompute finds (beams and seeded samples)', async () => {
    await selectBackend('cpu');
    const model = buildTransformer(tinyConfig({ vocab_size: 40, max_position_embeddings: 24, initializer_range: 0.5 }), { application: 'unilm', withMlm: true, seed: 5 });
    const inputs = [[2, 7, 8, 9, 3], [2, 11, 3]];
    const options = { endToken: 3, beams: 3, numReturn: 3, maxLength: 6 };
    const cached = beamSearch(new KvCacheScorer(model, { inputs }), options);
    const full = beamSearch(new FullRecomputeScorer(model, { inputs }), options);
    assert.deepEqual(cached.map((hs) => hs.map((h) => h.tokens)), full.map((hs) => hs.map((h) => h.tokens)));
    cached.flat().forEach((h, i) => assert.ok(Math.abs(h.score - full.flat()[i]!.score) < 1e-4));
    assert.equal(cached[0]!.length, 3);
    const samples = sample(new KvCacheScorer(model, { inputs }), { endToken: 3, numSamples: 3, seed: 1, maxLength: 6, topK: 5 });
    assert.deepEqual(samples, sample(new FullRecomputeScorer(model, { inputs }), { endToken: 3, numSamples: 3, seed: 1, maxLength: 6, topK: 5 }));
    disposeTransformer(model);
  });
});
