/**
 * How a step's global batch is split across the ranks. The split never changes what is
 * learned: every sample keeps its global position (`firstSample`), so its masks and dropout
 * do not depend on who computes it, and the all-reduce sums the same gradients (in a
 * different order, so equal within float rounding, not bitwise, to another split).
 *
 * - 'even': rank r gets [r*B/W, (r+1)*B/W). Runs with the same workers are bit-reproducible.
 * - 'dynamic' (default): a synchronous step waits for its slowest rank, and two cores of
 *   one machine, or two nodes of a cluster, are rarely equally fast. So the first half of
 *   the batch is split by each worker's measured speed, and the shorter half is handed out
 *   in shrinking pieces to whichever worker asks first (Claim), so that the ranks reach the
 *   all-reduce within about one short record of each other. Measured speeds
 *   follow a core that stays slow; the claims absorb what changes from step to step (on
 *   the 2-vCPU machines here, a rank's time per sample moved by 25% from one step to the
 *   next, and one core ran 75% slower than the other for minutes).
 *
 * The model of a rank's time to the all-reduce is `fixed + samples * perSample`: `fixed`
 * is what does not grow with its share (the previous step's optimizer update, the copy of
 * its gradients), `perSample` the forward and backward pass per sample. Steps of longer
 * records cost more, so the averages are kept per position the workers computed (each piece
 * padded to its own longest record), and a share up front, the step's longer half, is
 * counted at the step's longest record. Both are exponential moving averages of the
 * workers' step reports.
 *
 * Which records the claims hand out: the step's order (`stepOrder`) puts its shorter half
 * last, longest first, so the last pieces, padded each to its own record, are the shortest,
 * and the ranks meet at the all-reduce within one short record of each other.
 */
export type Balance = 'even' | 'dynamic';

export const BALANCES: readonly Balance[] = ['even', 'dynamic'];

/**
 * How many of a step's samples are left for the workers to claim (the rest is split up
 * front): its shorter half (see stepOrder). With one worker too, in the pieces two would
 * take (claimSize), each padded to its own longest record: one worker pads as two do.
 */
export function claimableSamples(samples: number, ranks: number, balance: Balance): number {
  return balance === 'dynamic' && ranks > 0 ? shorterHalf(samples) : 0;
}

function shorterHalf(samples: number): number {
  return Math.floor(samples / 2);
}

/**
 * The order of a step's records in its global batch, which is what their `firstSample`s, and
 * so their dropout masks, follow: the ledger's order, except that the shorter half goes last,
 * longest first (ties in the ledger's order). The same whatever the number of ranks, so N
 * workers draw the masks one worker draws; that half is what is claimed (claimableSamples),
 * so the last pieces are the shortest records and the ranks meet at the all-reduce within
 * one short record of each other. Half: on the 2-core machines here one core ran 25% slower
 * than the other from one step to the next, more than a quarter of short records absorbed.
 */
export function stepOrder(records: readonly number[], lengths: ArrayLike<number>): number[] {
  const tail = shorterHalf(records.length);
  if (tail === 0) return [...records];
  const byLength = records.map((id, at) => ({ id, at, length: lengths[id]! })).sort((a, b) => a.length - b.length || a.at - b.at);
  const last = byLength.slice(0, tail);
  const shortest = new Set(last.map((r) => r.at));
  last.sort((a, b) => b.length - a.length || a.at - b.at);
  return [...records.filter((_, at) => !shortest.has(at)), ...last.map((r) => r.id)];
}

/**
 * The size of the next claim out of `remaining` samples: large while much is left, down to
 * one sample at the end (guided self-scheduling), so that few pieces pay a forward+backward
 * call's fixed cost (two passes over the embedding's size and more, about as much as a short
 * record's compute) and the last ones finish close together. One worker takes pieces of the
 * size two would: it pads as they do, so their tokens/s compare like for like (its own
 * speed is the same either way here: the padding it saves pays for the calls it adds).
 */
export function claimSize(remaining: number, ranks: number): number {
  return Math.min(remaining, Math.max(1, Math.ceil(remaining / Math.max(ranks, 2))));
}

/** [from, to) of the global batch, per rank. */
export interface Share {
  readonly from: number;
  readonly to: number;
}

interface Estimate {
  fixed: number;
  perPosition: number;
}

/** Weight of the newest report in the averages: a core that turns slow is followed within a few steps. */
const SMOOTHING = 0.4;

export class ShareBalancer {
  private readonly estimates = new Map<number, Estimate>();

  constructor(readonly balance: Balance) {}

  /**
   * A worker's report of a step: the `positions` it computed (padding included: each
   * piece's records times the piece's length) in `forwardBackwardSeconds`, and
   * `fixedSeconds` that did not depend on its share. Reports of no positions teach nothing.
   */
  observe(workerId: number, positions: number, forwardBackwardSeconds: number, fixedSeconds: number): void {
    if (!(positions > 0 && forwardBackwardSeconds > 0 && fixedSeconds >= 0)) return;
    const perPosition = forwardBackwardSeconds / positions;
    const known = this.estimates.get(workerId);
    if (!known) {
      this.estimates.set(workerId, { fixed: fixedSeconds, perPosition });
      return;
    }
    known.fixed += SMOOTHING * (fixedSeconds - known.fixed);
    known.perPosition += SMOOTHING * (perPosition - known.perPosition);
  }

  /** A worker that left: a later worker of the same id (a restart) is measured afresh. */
  forget(workerId: number): void {
    this.estimates.delete(workerId);
  }

  /** Contiguous shares of `samples` (of `length` positions) for the workers in rank order; they cover [0, samples) exactly. */
  split(samples: number, length: number, workerIds: readonly number[]): Share[] {
    const counts = this.balance === 'dynamic' ? this.measuredCounts(samples, length, workerIds) : undefined;
    return sharesOf(counts ?? evenCounts(samples, workerIds.length));
  }

  /** Counts that equalize the predicted times to the all-reduce; undefined until every worker was measured. */
  private measuredCounts(samples: number, length: number, workerIds: readonly number[]): number[] | undefined {
    const estimates = workerIds.map((id) => this.estimates.get(id));
    if (workerIds.length < 2 || estimates.some((e) => e === undefined)) return undefined;
    const known = (estimates as Estimate[]).map((e) => ({ fixed: e.fixed, perSample: e.perPosition * length }));
    // fixed_r + c_r * perSample_r = T for every rank that gets samples, sum c_r = samples;
    // a rank whose fixed time alone exceeds T gets none, and T is solved again without it
    const active = new Set(known.map((_, r) => r));
    let exact: number[] = [];
    for (;;) {
      let rate = 0;
      let offset = 0;
      for (const r of active) {
        rate += 1 / known[r]!.perSample;
        offset += known[r]!.fixed / known[r]!.perSample;
      }
      const time = (samples + offset) / rate;
      exact = known.map((e, r) => (active.has(r) ? (time - e.fixed) / e.perSample : 0));
      const idle = exact.findIndex((c, r) => active.has(r) && c < 0);
      if (idle < 0) break;
      active.delete(idle);
    }
    return roundToTotal(exact, samples);
  }
}

function evenCounts(samples: number, ranks: number): number[] {
  return Array.from({ length: ranks }, (_, r) => Math.floor(((r + 1) * samples) / ranks) - Math.floor((r * samples) / ranks));
}

/** Largest remainder: integer counts that sum to `total`, each within 1 of its exact value. */
function roundToTotal(exact: readonly number[], total: number): number[] {
  const counts = exact.map((c) => Math.max(0, Math.floor(c)));
  let left = total - counts.reduce((a, b) => a + b, 0);
  // only ranks that take part (exact > 0) get the leftovers: a rank left out stays out
  const byRemainder = exact.map((c, r) => ({ r, c, rest: c - Math.floor(c) })).filter((e) => e.c > 0).sort((a, b) => b.rest - a.rest || a.r - b.r);
  for (let i = 0; left > 0; i = (i + 1) % byRemainder.length, left--) counts[byRemainder[i]!.r]!++;
  return counts;
}

function sharesOf(counts: readonly number[]): Share[] {
  let at = 0;
  return counts.map((c) => ({ from: at, to: (at += c) }));
}
