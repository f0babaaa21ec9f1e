/** A list of Float32Arrays seen as one logical flat buffer, without copying them. */
export class FlatBuffers {
  readonly length: number;
  /** starts[i]: logical index of buffers[i][0]. */
  readonly #starts: number[] = [];

  constructor(readonly buffers: readonly Float32Array[]) {
    let total = 0;
    for (const b of buffers) {
      this.#starts.push(total);
      total += b.length;
    }
    this.length = total;
  }

  /** Views of the logical range [offset, offset + length), in order; empty buffers are skipped. */
  pieces(offset: number, length: number): Float32Array[] {
    const out: Float32Array[] = [];
    if (length === 0) return out;
    let i = this.#find(offset);
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const b = this.buffers[i]!;
      const start = at - this.#starts[i]!;
      const take = Math.min(b.length - start, end - at);
      if (take > 0) out.push(b.subarray(start, start + take));
      at += take;
      i++;
    }
    return out;
  }

  /** Index of the buffer holding logical index `offset` (binary search: lists of hundreds of gradients). */
  #find(offset: number): number {
    let lo = 0;
    let hi = this.buffers.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.#starts[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}

/** [start, end) of segment k when `length` elements are split into n near-equal segments. */
export function segment(length: number, n: number, k: number): [number, number] {
  return [Math.floor((k * length) / n), Math.floor(((k + 1) * length) / n)];
}

/** [offset, length] of each chunk of the range [start, end). */
export function chunks(start: number, end: number, chunkElements: number): [number, number][] {
  const out: [number, number][] = [];
  for (let at = start; at < end; at += chunkElements) out.push([at, Math.min(chunkElements, end - at)]);
  return out;
}

export interface Transfer {
  /** Ring step (all-reduce: 0..n-2 reduce-scatter, n-1..2n-3 all-gather). */
  readonly step: number;
  readonly offset: number;
  readonly length: number;
}

export interface RingSchedule {
  readonly sends: readonly Transfer[];
  /** sends[i] may go once receives[sendAfter[i]] is applied (-1: at once). */
  readonly sendAfter: readonly number[];
  readonly receives: readonly Transfer[];
}

/**
 * The ring all-reduce of `length` elements at ring position p of n, chunked: at step s
 * position p sends segment (p - s) and receives segment (p - s - 1) during reduce-scatter,
 * then sends (p + 1 - k) and receives (p - k) at all-gather step k. What is sent at step s
 * is what was received at step s - 1, chunk by chunk: that is the pipeline.
 */
export function allReduceSchedule(length: number, n: number, p: number, chunkElements: number): RingSchedule {
  return ringSchedule(n, p, chunkElements, 'allReduce', (k) => segment(length, n, k));
}

/**
 * The steps of `phases` of the ring all-reduce (see allReduceSchedule) over segments that
 * `segmentAt` gives by ring index: after the reduce-scatter steps (0..n-2) position p holds
 * the whole sum of ring segment (p + 1); the all-gather steps (n-1..2n-3) start by sending it.
 */
export function ringSchedule(n: number, p: number, chunkElements: number, phases: 'allReduce' | 'reduceScatter' | 'allGather', segmentAt: (k: number) => [number, number]): RingSchedule {
  const mod = (x: number): number => ((x % n) + n) % n;
  const sendSeg = (s: number): number => (s < n - 1 ? mod(p - s) : mod(p + 1 - (s - (n - 1))));
  const recvSeg = (s: number): number => (s < n - 1 ? mod(p - s - 1) : mod(p - (s - (n - 1))));
  const first = phases === 'allGather' ? n - 1 : 0;
  const end = phases === 'reduceScatter' ? n - 1 : 2 * (n - 1);
  const sends: Transfer[] = [];
  const sendAfter: number[] = [];
  const receives: Transfer[] = [];
  const recvBase: number[] = [];
  for (let s = first; s < end; s++) {
    recvBase.push(receives.length);
    for (const [offset, len] of chunks(...segmentAt(recvSeg(s)), chunkElements)) receives.push({ step: s, offset, length: len });
    chunks(...segmentAt(sendSeg(s)), chunkElements).forEach(([offset, len], j) => {
      sends.push({ step: s, offset, length: len });
      // the first step sends what this rank holds; each later one what the step before received
      sendAfter.push(s === first ? -1 : recvBase[s - first - 1]! + j);
    });
  }
  return { sends, sendAfter, receives };
}
