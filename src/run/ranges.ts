/**
 * Sets of non-negative integers as sorted, disjoint, non-adjacent half-open ranges
 * `[start, end)`. The ledger hands out positions of an epoch's permutation mostly in order,
 * so a step's positions, the returned ones and the journal's entries are a few ranges
 * where a list of numbers would be millions.
 */
export type Range = readonly [start: number, end: number];
export type Ranges = readonly Range[];

/** How many integers the set holds. */
export function rangesSize(ranges: Ranges): number {
  let n = 0;
  for (const [s, e] of ranges) n += e - s;
  return n;
}

/** Every integer of the set, in increasing order. */
export function* rangeValues(ranges: Ranges): Generator<number> {
  for (const [s, e] of ranges) for (let i = s; i < e; i++) yield i;
}

/** Why `ranges` is not a canonical set (sorted, disjoint, non-adjacent, non-empty ranges of safe integers), or undefined. */
export function rangesProblem(ranges: unknown): string | undefined {
  if (!Array.isArray(ranges)) return 'not a list of [start, end) pairs';
  let previousEnd = -1;
  for (const r of ranges as unknown[]) {
    if (!Array.isArray(r) || r.length !== 2 || !r.every((x) => Number.isSafeInteger(x) && (x as number) >= 0)) return `${JSON.stringify(r)} is not a [start, end) pair of integers >= 0`;
    const [s, e] = r as [number, number];
    if (e <= s) return `range [${s}, ${e}) is empty`;
    if (s <= previousEnd) return `range [${s}, ${e}) overlaps or touches the one before it`;
    previousEnd = e;
  }
  return undefined;
}

/** The union of two disjoint sets; throws if they share an integer (a caller's bookkeeping error). */
export function unionDisjoint(a: Ranges, b: Ranges): Range[] {
  const all = [...a, ...b].sort((x, y) => x[0] - y[0]);
  const out: [number, number][] = [];
  for (const [s, e] of all) {
    const last = out[out.length - 1];
    if (last && s < last[1]) throw new RangeError(`ranges overlap at ${s}`);
    if (last && s === last[1]) last[1] = e;
    else out.push([s, e]);
  }
  return out;
}

/** The first `n` integers of the set (fewer if it is smaller), and the rest. */
export function takeFirst(ranges: Ranges, n: number): { taken: Range[]; rest: Range[] } {
  const taken: Range[] = [];
  const rest: Range[] = [];
  let left = n;
  for (const [s, e] of ranges) {
    if (left >= e - s) {
      taken.push([s, e]);
      left -= e - s;
    } else if (left > 0) {
      taken.push([s, s + left]);
      rest.push([s + left, e]);
      left = 0;
    } else rest.push([s, e]);
  }
  return { taken, rest };
}

/** `a` without `b`, or undefined when some integer of `b` is not in `a`. */
export function subtractContained(a: Ranges, b: Ranges): Range[] | undefined {
  const out: Range[] = [];
  let j = 0;
  for (const [s, e] of a) {
    let from = s;
    while (j < b.length && b[j]![0] < e) {
      const [bs, be] = b[j]!;
      if (bs < from || be > e) return undefined;
      if (bs > from) out.push([from, bs]);
      from = be;
      j++;
    }
    if (from < e) out.push([from, e]);
  }
  return j === b.length ? out : undefined;
}
