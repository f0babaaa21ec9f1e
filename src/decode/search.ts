/**
 * Batched beam search and sampling over a `Scorer` (several inputs decoded together, each
 * with its beams or samples as rows of the scorer), with an optional `DecodeConstraint`.
 * Conventions (Hugging Face `generate`, bert4keras `AutoRegressiveDecoder`):
 * - a hypothesis ends with `endToken` ([SEP]); with `ends` n, at its n-th [SEP] (bert4keras
 *   `min_ends`); earlier [SEP]s are ordinary tokens. The ending [SEP] is not in `tokens`.
 * - `maxLength`: most tokens generated, the ending [SEP] included; a hypothesis still open
 *   then is returned with `ended: false`. `minLength`: fewest tokens before the ending [SEP].
 * - with a constraint, log-probabilities are renormalized among the allowed tokens (the
 *   ending [SEP] among them where `canEnd`); without one they are the model's.
 */
import type { DecodeConstraint } from './constraint.js';
import type { Scorer } from './scorer.js';

export interface Hypothesis {
  /** Generated token ids, without the ending [SEP]. */
  readonly tokens: number[];
  /** Beam search: logProb / length^lengthPenalty; sampling: logProb. */
  readonly score: number;
  /** Sum of the log-probabilities of the tokens (and of the ending [SEP]). */
  readonly logProb: number;
  /** Whether it ended with [SEP] (false: cut at maxLength). */
  readonly ended: boolean;
}

export interface DecodeOptions<S = unknown> {
  /** The token that ends a hypothesis ([SEP]). */
  readonly endToken: number;
  /** Most tokens generated, the ending [SEP] included. Default 32. */
  readonly maxLength?: number;
  /** Fewest tokens before the ending [SEP]. Default 0. */
  readonly minLength?: number;
  /** A hypothesis ends at its `ends`-th [SEP] (bert4keras min_ends). Default 1. */
  readonly ends?: number;
  readonly constraint?: DecodeConstraint<S>;
}

export interface BeamSearchOptions<S = unknown> extends DecodeOptions<S> {
  /** Beams per input. Default 4. */
  readonly beams?: number;
  /** Finished hypotheses are ranked by logProb / length^lengthPenalty (length with the [SEP]). Default 1. */
  readonly lengthPenalty?: number;
  /** Hypotheses returned per input, best first (n-best); at most `beams`. Default 1. */
  readonly numReturn?: number;
  /** Stop an input as soon as it has `beams` finished hypotheses, not when no open beam can beat them. Default false. */
  readonly earlyStopping?: boolean;
}

export interface SampleOptions<S = unknown> extends DecodeOptions<S> {
  /** Samples per input. Default 1. */
  readonly numSamples?: number;
  /** Log-probabilities are divided by it before sampling. Default 1. */
  readonly temperature?: number;
  /** Sample among the k most probable tokens only; 0: all. Default 0. */
  readonly topK?: number;
  /** Sample among the smallest set of most probable tokens whose probability reaches p. Default 1. */
  readonly topP?: number;
  /** Sample j of input i draws from its own stream of (seed, firstInput + i, j): the same whatever else is in the batch. Default 0. */
  readonly seed?: number;
  /** The index of the first input in a longer run decoded in several batches, so that batching changes no sample. Default 0. */
  readonly firstInput?: number;
}

interface Row<S> {
  readonly input: number;
  readonly tokens: number[];
  readonly logProb: number;
  readonly state: S | undefined;
  /** [SEP]s among the tokens. */
  readonly seps: number;
}

interface Resolved<S> {
  endToken: number;
  maxLength: number;
  minLength: number;
  ends: number;
  constraint: DecodeConstraint<S> | undefined;
}

function positiveInteger(value: number, name: string): number {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`${name} must be an integer >= 1, got ${value}`);
  return value;
}

function resolve<S>(o: DecodeOptions<S>, vocabSize: number): Resolved<S> {
  const maxLength = positiveInteger(o.maxLength ?? 32, 'maxLength');
  const minLength = o.minLength ?? 0;
  if (!Number.isInteger(minLength) || minLength < 0) throw new RangeError(`minLength must be an integer >= 0, got ${minLength}`);
  if (!Number.isInteger(o.endToken) || o.endToken < 0 || o.endToken >= vocabSize) throw new RangeError(`endToken ${o.endToken} is outside the vocabulary of ${vocabSize}`);
  return { endToken: o.endToken, maxLength, minLength, ends: positiveInteger(o.ends ?? 1, 'ends'), constraint: o.constraint };
}

/**
 * The tokens a row may take next with their log-probabilities (renormalized under a
 * constraint): `continues` for tokens that keep the row open (null: every token but an
 * ending [SEP]), `endLogProb` for the ending [SEP] (-Infinity: not allowed now).
 */
interface Choices {
  readonly continues: Int32Array | null;
  /** Added to every log-probability (the renormalization). */
  readonly shift: number;
  readonly endLogProb: number;
  /** The token excluded from `continues` when it is null: the ending [SEP], or -1. */
  readonly excluded: number;
}

function choices<S>(row: Row<S>, logProbs: Float32Array, base: number, vocab: number, o: Resolved<S>): Choices {
  const ending = row.seps === o.ends - 1;
  const mayEnd = ending && row.tokens.length >= o.minLength && (!o.constraint || o.constraint.canEnd(row.state as S));
  let continues: Int32Array | null = o.constraint ? o.constraint.allowed(row.state as S) : null;
  if (continues && ending) continues = continues.filter((t) => t !== o.endToken);
  let shift = 0;
  if (o.constraint) {
    // log of the probability mass of what is allowed
    let max = -Infinity;
    const ids = continues;
    const each = (f: (lp: number) => void): void => {
      if (ids) for (const t of ids) f(logProbs[base + t]!);
      else for (let t = 0; t < vocab; t++) if (!(ending && t === o.endToken)) f(logProbs[base + t]!);
      if (mayEnd) f(logProbs[base + o.endToken]!);
    };
    each((lp) => (max = Math.max(max, lp)));
    if (max > -Infinity) {
      let sum = 0;
      each((lp) => (sum += Math.exp(lp - max)));
      shift = -(max + Math.log(sum));
    }
  }
  return { continues, shift, endLogProb: mayEnd ? logProbs[base + o.endToken]! + shift : -Infinity, excluded: ending ? o.endToken : -1 };
}

/** The k best [token, logProb] of a row among `c.continues`, best first. */
function topContinues(c: Choices, logProbs: Float32Array, base: number, vocab: number, k: number): [number, number][] {
  const best: [number, number][] = [];
  const consider = (t: number): void => {
    const lp = logProbs[base + t]!;
    if (lp === -Infinity || (best.length === k && lp <= best[k - 1]![1])) return;
    let i = best.length === k ? k - 1 : best.length;
    if (best.length === k) best.pop();
    while (i > 0 && best[i - 1]![1] < lp) i--;
    best.splice(i, 0, [t, lp]);
  };
  if (c.continues) for (const t of c.continues) consider(t);
  else for (let t = 0; t < vocab; t++) if (t !== c.excluded) consider(t);
  return best.map(([t, lp]) => [t, lp + c.shift]);
}

/** The next state of a row after `token`, or null when the constraint refuses it. */
function advance<S>(row: Row<S>, token: number, o: Resolved<S>): { state: S | undefined } | null {
  if (!o.constraint) return { state: undefined };
  const state = o.constraint.advance(row.state as S, token);
  return state === undefined ? null : { state };
}

function startRows<S>(inputs: number, o: Resolved<S>): Row<S>[] {
  return Array.from({ length: inputs }, (_, input) => ({ input, tokens: [], logProb: 0, state: o.constraint?.start(), seps: 0 }));
}

/** Keeps the `capacity` best hypotheses, best first. */
class NBest {
  readonly items: Hypothesis[] = [];
  constructor(private readonly capacity: number) {}
  add(h: Hypothesis): void {
    let i = this.items.length;
    while (i > 0 && this.items[i - 1]!.score < h.score) i--;
    if (i >= this.capacity) return;
    this.items.splice(i, 0, h);
    if (this.items.length > this.capacity) this.items.pop();
  }
  get full(): boolean {
    return this.items.length >= this.capacity;
  }
  get worst(): number {
    return this.items.at(-1)?.score ?? -Infinity;
  }
}

/**
 * Beam search over all inputs at once: per input, `beams` open hypotheses; each step every
 * open beam is extended by its best tokens, the best `beams` continuations stay open and
 * ending ones (among the best `beams` candidates) join the input's finished hypotheses.
 * Returns per input its best `numReturn` hypotheses, best first.
 */
export function beamSearch<S = unknown>(scorer: Scorer, options: BeamSearchOptions<S>): Hypothesis[][] {
  const o = resolve(options, scorer.vocabSize);
  const beams = positiveInteger(options.beams ?? 4, 'beams');
  const numReturn = positiveInteger(options.numReturn ?? 1, 'numReturn');
  if (numReturn > beams) throw new RangeError(`numReturn ${numReturn} is more than the ${beams} beams`);
  const lengthPenalty = options.lengthPenalty ?? 1;
  if (!Number.isFinite(lengthPenalty)) throw new RangeError(`lengthPenalty must be a finite number, got ${lengthPenalty}`);
  const earlyStopping = options.earlyStopping ?? false;
  const vocab = scorer.vocabSize;
  const inputs = scorer.rows;
  const finished = Array.from({ length: inputs }, () => new NBest(earlyStopping ? beams : numReturn));
  const penalized = (logProb: number, length: number): number => logProb / Math.pow(Math.max(length, 1), lengthPenalty);
  // the best final score a beam of this log-probability can still reach: later tokens only lower the sum
  const bound = (logProb: number, length: number): number => (lengthPenalty > 0 ? penalized(logProb, o.maxLength) : penalized(logProb, length + 1));
  const done = new Array<boolean>(inputs).fill(false);
  let rows = startRows(inputs, o);
  let last: Int32Array | null = null;
  for (let length = 0; length < o.maxLength && rows.length > 0; length++) {
    const logProbs = scorer.step(last);
    const byInput = new Map<number, { row: number; token: number; logProb: number; state: S | undefined; ends: boolean }[]>();
    rows.forEach((row, r) => {
      const base = r * vocab;
      const c = choices(row, logProbs, base, vocab, o);
      const list = byInput.get(row.input) ?? [];
      byInput.set(row.input, list);
      if (c.endLogProb > -Infinity) list.push({ row: r, token: o.endToken, logProb: row.logProb + c.endLogProb, state: row.state, ends: true });
      // each beam contributes at most `beams` open continuations; more when the constraint refuses some
      for (let want = beams; ; want *= 2) {
        const top = topContinues(c, logProbs, base, vocab, want);
        const kept = [];
        for (const [token, lp] of top) {
          const next = advance(row, token, o);
          if (next) kept.push({ row: r, token, logProb: row.logProb + lp, state: next.state, ends: false });
          if (kept.length === beams) break;
        }
        if (kept.length === beams || top.length < want) {
          list.push(...kept);
          break;
        }
      }
    });
    const next: Row<S>[] = [];
    const parents: number[] = [];
    const tokens: number[] = [];
    for (const [input, candidates] of byInput) {
      candidates.sort((a, b) => b.logProb - a.logProb);
      const open: typeof candidates = [];
      candidates.forEach((cand, rank) => {
        if (open.length === beams) return;
        if (cand.ends) {
          if (rank < beams) finished[input]!.add({ tokens: [...rows[cand.row]!.tokens], score: penalized(cand.logProb, length + 1), logProb: cand.logProb, ended: true });
        } else open.push(cand);
      });
      const nbest = finished[input]!;
      const best = open[0];
      if (open.length === 0 || (nbest.full && (earlyStopping || bound(best!.logProb, length + 1) <= nbest.worst))) {
        done[input] = true;
        continue;
      }
      for (const cand of open) {
        const row = rows[cand.row]!;
        parents.push(cand.row);
        tokens.push(cand.token);
        next.push({ input, tokens: [...row.tokens, cand.token], logProb: cand.logProb, state: cand.state, seps: row.seps + (cand.token === o.endToken ? 1 : 0) });
      }
    }
    rows = next;
    if (rows.length === 0) break;
    if (length + 1 < o.maxLength) {
      scorer.select(Int32Array.from(parents));
      last = Int32Array.from(tokens);
    }
  }
  // beams still open at maxLength compete as they are
  for (const row of rows) if (!done[row.input]) finished[row.input]!.add({ tokens: row.tokens, score: penalized(row.logProb, row.tokens.length), logProb: row.logProb, ended: false });
  return finished.map((f) => f.items.slice(0, numReturn));
}

/** splitmix32 over a seed mixed from (seed, input, sample): uniform numbers in [0, 1). */
export function sampleStream(seed: number, input: number, sample: number): () => number {
  let state = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(input + 1, 0x85ebca6b) ^ Math.imul(sample + 1, 0xc2b2ae35)) >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  };
}

/**
 * Draws one token from a row's choices: temperature, then top-k, then top-p (nucleus), as
 * Hugging Face applies them. Returns the token and its log-probability before temperature.
 */
function draw(c: Choices, logProbs: Float32Array, base: number, vocab: number, o: { temperature: number; topK: number; topP: number; endToken: number }, random: () => number, refused: Set<number>): [number, number] | null {
  const ids: number[] = [];
  if (c.continues) for (const t of c.continues) ids.push(t);
  else for (let t = 0; t < vocab; t++) if (t !== c.excluded) ids.push(t);
  if (c.endLogProb > -Infinity) ids.push(o.endToken);
  const lpOf = (t: number): number => (t === o.endToken && c.endLogProb > -Infinity ? c.endLogProb : logProbs[base + t]! + c.shift);
  let pool = ids.filter((t) => !refused.has(t) && lpOf(t) > -Infinity).map((t) => ({ t, lp: lpOf(t) }));
  if (pool.length === 0) return null;
  pool.sort((a, b) => b.lp - a.lp || a.t - b.t);
  if (o.topK > 0 && pool.length > o.topK) pool = pool.slice(0, o.topK);
  const max = pool[0]!.lp;
  const weights = pool.map((p) => Math.exp((p.lp - max) / o.temperature));
  let total = weights.reduce((a, b) => a + b, 0);
  if (o.topP < 1) {
    let mass = 0;
    let keep = 0;
    while (keep < pool.length && mass < o.topP * total) mass += weights[keep++]!;
    pool = pool.slice(0, Math.max(keep, 1));
    weights.length = pool.length;
    total = weights.reduce((a, b) => a + b, 0);
  }
  let u = random() * total;
  for (let i = 0; i < pool.length; i++) {
    u -= weights[i]!;
    if (u < 0) return [pool[i]!.t, pool[i]!.lp];
  }
  return [pool.at(-1)!.t, pool.at(-1)!.lp];
}

/**
 * Sampling: `numSamples` independent continuations per input, drawn with temperature, top-k
 * and top-p from seeded streams. Returns per input its samples in draw order; a sample the
 * constraint leaves with no allowed token is left out.
 */
export function sample<S = unknown>(scorer: Scorer, options: SampleOptions<S>): Hypothesis[][] {
  const o = resolve(options, scorer.vocabSize);
  const numSamples = positiveInteger(options.numSamples ?? 1, 'numSamples');
  const temperature = options.temperature ?? 1;
  const topK = options.topK ?? 0;
  const topP = options.topP ?? 1;
  if (!(temperature > 0) || !Number.isFinite(temperature)) throw new RangeError(`temperature must be a number > 0, got ${temperature}`);
  if (!Number.isInteger(topK) || topK < 0) throw new RangeError(`topK must be an integer >= 0, got ${topK}`);
  if (!(topP > 0 && topP <= 1)) throw new RangeError(`topP must be in (0, 1], got ${topP}`);
  const vocab = scorer.vocabSize;
  const inputs = scorer.rows;
  const results: (Hypothesis | null)[][] = Array.from({ length: inputs }, () => new Array<Hypothesis | null>(numSamples).fill(null));
  let rows: (Row<S> & { sample: number; random: () => number })[] = [];
  for (let input = 0; input < inputs; input++) {
    for (let j = 0; j < numSamples; j++) rows.push({ ...startRows(1, o)[0]!, input, sample: j, random: sampleStream(options.seed ?? 0, (options.firstInput ?? 0) + input, j) });
  }
  // the first step scores each input once; its samples start from that one row
  let logProbs = scorer.step(null);
  let rowOf = Int32Array.from(rows, (r) => r.input);
  for (let length = 0; length < o.maxLength && rows.length > 0; length++) {
    const next: typeof rows = [];
    const parents: number[] = [];
    const tokens: number[] = [];
    rows.forEach((row, r) => {
      const base = rowOf[r]! * vocab;
      const c = choices(row, logProbs, base, vocab, o);
      const refused = new Set<number>();
      for (;;) {
        const drawn = draw(c, logProbs, base, vocab, { temperature, topK, topP, endToken: o.endToken }, row.random, refused);
        if (!drawn) return; // nothing the constraint allows: the sample cannot exist
        const [token, lp] = drawn;
        const logProb = row.logProb + lp;
        if (token === o.endToken && row.seps === o.ends - 1) {
          results[row.input]![row.sample] = { tokens: row.tokens, score: logProb, logProb, ended: true };
          return;
        }
        const state = advance(row, token, o);
        if (!state) {
          refused.add(token);
          continue;
        }
        const grown = { ...row, tokens: [...row.tokens, token], logProb, state: state.state, seps: row.seps + (token === o.endToken ? 1 : 0) };
        if (length + 1 === o.maxLength) results[row.input]![row.sample] = { tokens: grown.tokens, score: logProb, logProb, ended: false };
        else {
          next.push(grown);
          parents.push(rowOf[r]!);
          tokens.push(token);
        }
        return;
      }
    });
    rows = next;
    if (rows.length === 0) break;
    scorer.select(Int32Array.from(parents));
    logProbs = scorer.step(Int32Array.from(tokens));
    rowOf = Int32Array.from(rows, (_, i) => i);
  }
  return results.map((list) => list.filter((h): h is Hypothesis => h !== null));
}
