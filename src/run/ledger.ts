import { createHash } from 'node:crypto';
import { seededRandom } from '../data/masking.js';
import { type Range, type Ranges, rangesProblem, rangesSize, subtractContained, takeFirst, unionDisjoint } from './ranges.js';

/**
 * The exactly-once data ledger of a run. Each epoch is a seeded permutation of the
 * training records; the ledger works on *positions* in that permutation (0..n-1), so that
 * what it hands out, what it keeps and what the journal records are a few ranges, and
 * maps positions to record ids only when a step's records are asked for.
 *
 * A position is in exactly one of three places: consumed (its step committed), in flight
 * (handed to a step that has neither committed nor aborted), or available. A step gets the
 * `globalBatch` smallest available positions, so records an aborted step returned are
 * handed out again first, in permutation order, and then the never-handed ones follow.
 * Everything at or past `cursor` is available, so the state is `cursor`, the returned
 * ranges below it and the steps in flight.
 *
 * The last step of an epoch may be short (n mod globalBatch records): a step never spans
 * two epochs, and the epoch advances only when every one of its records is committed. The
 * alternatives break a promise: padding with repeats (DistributedSampler) or dropping the
 * tail breaks exactly-once, and filling from the next epoch makes a step's records depend
 * on steps still in flight. The training step divides by the global target count, so a
 * short step is a correct, smaller update.
 */

export const LEDGER_STATE_FORMAT = 'tfjs-pretrain-ledger/1';

export class LedgerError extends Error {
  override name = 'LedgerError';
}

export interface DataLedgerOptions {
  /** The training records by id (e.g. a global record number; held-out records excluded), distinct. */
  readonly recordIds: ArrayLike<number>;
  /** The run seed: with the epoch it fixes the permutation. */
  readonly seed: number;
  /** Records per step. */
  readonly globalBatch: number;
}

/** What a step was handed. */
export interface StepRecords {
  readonly step: number;
  readonly epoch: number;
  /** Record ids in the step's order: the index in this list is the sample's position in the global batch. */
  readonly records: readonly number[];
  /** The same records as positions in the epoch's permutation: what the journal stores. */
  readonly positions: Ranges;
}

/** A committed step, as the journal keeps it and `redo` takes it back. */
export interface CommittedStep {
  readonly step: number;
  readonly epoch: number;
  readonly positions: Ranges;
}

/**
 * The ledger's durable state, JSON. It describes committed progress only: records in
 * flight when it was taken are listed as returned, because no step of a restored run is
 * in flight and those records were never consumed.
 */
export interface LedgerState {
  readonly format: typeof LEDGER_STATE_FORMAT;
  readonly seed: number;
  readonly globalBatch: number;
  /** Records per epoch. */
  readonly records: number;
  /** SHA-256 (hex, first 32 digits) of the record ids in order: a state only loads onto the same records. */
  readonly recordsDigest: string;
  readonly epoch: number;
  /** Every position at or past the cursor is available; below it, all are consumed but `returned`. */
  readonly cursor: number;
  readonly returned: Ranges;
}

/** Fisher-Yates from the run seed and the epoch: the permutation of `n` positions to record indexes. */
export function epochPermutation(seed: number, epoch: number, n: number): Uint32Array {
  const perm = new Uint32Array(n);
  for (let i = 0; i < n; i++) perm[i] = i;
  const random = seededRandom(seed, epoch, 0x1ed9e7);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    const t = perm[i]!;
    perm[i] = perm[j]!;
    perm[j] = t;
  }
  return perm;
}

function digestOf(recordIds: ArrayLike<number>): string {
  const hash = createHash('sha256');
  const chunk = new Float64Array(4096);
  for (let i = 0; i < recordIds.length; i += chunk.length) {
    const n = Math.min(chunk.length, recordIds.length - i);
    for (let k = 0; k < n; k++) chunk[k] = recordIds[i + k]!;
    hash.update(new Uint8Array(chunk.buffer, 0, 8 * n));
  }
  return hash.digest('hex').slice(0, 32);
}

function checkRecordIds(recordIds: ArrayLike<number>): void {
  if (recordIds.length === 0) throw new LedgerError('the ledger needs at least one training record');
  const seen = new Set<number>();
  for (let i = 0; i < recordIds.length; i++) {
    const id = recordIds[i]!;
    if (!Number.isSafeInteger(id) || id < 0) throw new LedgerError(`record id ${id} (at index ${i}) is not an integer >= 0`);
    if (seen.has(id)) throw new LedgerError(`record id ${id} appears twice: exactly-once needs distinct record ids`);
    seen.add(id);
  }
}

function checkCount(what: string, value: number, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) throw new LedgerError(`${what} must be an integer >= ${min}, got ${value}`);
}

export class DataLedger {
  private readonly recordIds: ArrayLike<number>;
  readonly seed: number;
  readonly globalBatch: number;
  private readonly digest: string;
  private epochIndex = 0;
  private permutation: Uint32Array;
  private cursor = 0;
  private returned: Range[] = [];
  private readonly inFlight = new Map<number, Range[]>();
  private consumed = 0;

  constructor(options: DataLedgerOptions) {
    checkRecordIds(options.recordIds);
    checkCount('the seed', options.seed, 0);
    checkCount('the global batch', options.globalBatch, 1);
    this.recordIds = options.recordIds;
    this.seed = options.seed;
    this.globalBatch = options.globalBatch;
    this.digest = digestOf(options.recordIds);
    this.permutation = epochPermutation(this.seed, 0, this.epochSize);
  }

  /** A ledger continuing from `state`, over the same record ids it was taken on. */
  static fromState(state: LedgerState, recordIds: ArrayLike<number>): DataLedger {
    if (state?.format !== LEDGER_STATE_FORMAT) throw new LedgerError(`ledger state has format ${String(state?.format)}, expected ${LEDGER_STATE_FORMAT}`);
    const ledger = new DataLedger({ recordIds, seed: state.seed, globalBatch: state.globalBatch });
    if (state.records !== recordIds.length || state.recordsDigest !== ledger.digest) {
      throw new LedgerError(
        `the ledger state was taken on ${state.records} records (digest ${state.recordsDigest}) but the data has ${recordIds.length} (digest ${ledger.digest}): ` +
          'resume with the data the run started with',
      );
    }
    checkCount('the ledger epoch', state.epoch, 0);
    checkCount('the ledger cursor', state.cursor, 0);
    if (state.cursor > state.records) throw new LedgerError(`ledger cursor ${state.cursor} is past the ${state.records} records of an epoch`);
    const problem = rangesProblem(state.returned);
    if (problem) throw new LedgerError(`ledger returned records: ${problem}`);
    const last = state.returned[state.returned.length - 1];
    if (last && last[1] > state.cursor) throw new LedgerError(`ledger returned records reach ${last[1]}, past the cursor ${state.cursor}`);
    ledger.setEpoch(state.epoch);
    ledger.cursor = state.cursor;
    ledger.returned = state.returned.map(([s, e]) => [s, e]);
    ledger.consumed = state.cursor - rangesSize(state.returned);
    // a state of a finished epoch never exists (commit advances), but accept one written by hand
    ledger.advanceIfComplete();
    return ledger;
  }

  /** Records per epoch. */
  get epochSize(): number {
    return this.recordIds.length;
  }

  /** The current epoch, 0-based. */
  get epoch(): number {
    return this.epochIndex;
  }

  /** Epochs whose every record has committed: the epoch advances exactly when one completes, so this equals `epoch`. */
  get completedEpochs(): number {
    return this.epochIndex;
  }

  /** Records of the current epoch consumed so far. */
  get consumedInEpoch(): number {
    return this.consumed;
  }

  /** The steps handed out and not yet committed or aborted, in increasing order. */
  get stepsInFlight(): number[] {
    return [...this.inFlight.keys()].sort((a, b) => a - b);
  }

  /**
   * Hands `step` the next records: the `globalBatch` smallest available positions of the
   * current epoch (fewer at its end). Undefined when none is available but some are in
   * flight: the epoch cannot advance until those steps commit or abort.
   */
  next(step: number): StepRecords | undefined {
    checkCount('a step number', step, 0);
    if (this.inFlight.has(step)) throw new LedgerError(`step ${step} is already in flight; commit or abort it first`);
    const { taken, rest } = takeFirst(this.returned, this.globalBatch);
    let positions = taken;
    const more = Math.min(this.globalBatch - rangesSize(taken), this.epochSize - this.cursor);
    if (more > 0) {
      positions = unionDisjoint(taken, [[this.cursor, this.cursor + more]]);
      this.cursor += more;
    }
    if (positions.length === 0) return undefined;
    this.returned = rest;
    this.inFlight.set(step, positions);
    return { step, epoch: this.epochIndex, records: this.recordsAt(positions), positions };
  }

  /** Marks the step's records consumed; returns what the journal records. May complete the epoch. */
  commit(step: number): CommittedStep {
    const positions = this.takeInFlight(step, 'commit');
    const committed = { step, epoch: this.epochIndex, positions };
    this.consumed += rangesSize(positions);
    this.advanceIfComplete();
    return committed;
  }

  /** Gives the step's records back: they are handed out again first, in permutation order. */
  abort(step: number): void {
    this.returned = unionDisjoint(this.returned, this.takeInFlight(step, 'abort'));
  }

  /** Aborts every step in flight (a restarted or re-formed run has none). */
  abortAll(): void {
    for (const step of this.stepsInFlight) this.abort(step);
  }

  /**
   * Applies a commit read back from the journal to a ledger restored from an earlier
   * state, as if its step had been handed out and committed here. Refused unless the
   * positions belong to the current epoch and are all available.
   */
  redo(commit: CommittedStep): void {
    if (this.inFlight.size > 0) throw new LedgerError('redo replays the journal onto a restored ledger, which has no step in flight');
    if (commit.epoch !== this.epochIndex) throw new LedgerError(`journaled step ${commit.step} is of epoch ${commit.epoch}, but the ledger is in epoch ${this.epochIndex}: the journal does not follow this state`);
    const problem = rangesProblem(commit.positions) ?? (rangesSize(commit.positions) === 0 ? 'no positions' : undefined);
    if (problem) throw new LedgerError(`journaled step ${commit.step}: ${problem}`);
    const below = commit.positions.filter(([s]) => s < this.cursor).map(([s, e]): Range => [s, Math.min(e, this.cursor)]);
    const returned = subtractContained(this.returned, below);
    const last = commit.positions[commit.positions.length - 1]!;
    if (!returned || last[1] > this.epochSize) {
      throw new LedgerError(`journaled step ${commit.step} consumes records that are already consumed or outside the epoch: the journal does not follow this state`);
    }
    // positions past the cursor: what lies between them was handed to steps that have not committed (yet)
    let gaps: Range[] = [];
    let cursor = this.cursor;
    for (const [s, e] of commit.positions) {
      if (e <= this.cursor) continue;
      const start = Math.max(s, this.cursor);
      if (start > cursor) gaps.push([cursor, start]);
      cursor = e;
    }
    this.returned = unionDisjoint(returned, gaps);
    this.cursor = Math.max(this.cursor, cursor);
    this.consumed += rangesSize(commit.positions);
    this.advanceIfComplete();
  }

  /** The durable state; steps in flight count as returned (see LedgerState). */
  state(): LedgerState {
    let returned: Range[] = this.returned;
    for (const positions of this.inFlight.values()) returned = unionDisjoint(returned, positions);
    return {
      format: LEDGER_STATE_FORMAT,
      seed: this.seed,
      globalBatch: this.globalBatch,
      records: this.epochSize,
      recordsDigest: this.digest,
      epoch: this.epochIndex,
      cursor: this.cursor,
      returned: returned.map(([s, e]) => [s, e]),
    };
  }

  /** The record ids at these positions of the current epoch's permutation. */
  recordsAt(positions: Ranges): number[] {
    const out: number[] = [];
    for (const [s, e] of positions) for (let p = s; p < e; p++) out.push(this.recordIds[this.permutation[p]!]!);
    return out;
  }

  private takeInFlight(step: number, what: string): Range[] {
    const positions = this.inFlight.get(step);
    if (!positions) throw new LedgerError(`cannot ${what} step ${step}: it is not in flight (never handed out, or already committed or aborted)`);
    this.inFlight.delete(step);
    return positions;
  }

  private advanceIfComplete(): void {
    if (this.consumed < this.epochSize) return;
    this.setEpoch(this.epochIndex + 1);
    this.cursor = 0;
    this.returned = [];
    this.consumed = 0;
  }

  private setEpoch(epoch: number): void {
    if (epoch !== this.epochIndex) this.permutation = epochPermutation(this.seed, epoch, this.epochSize);
    this.epochIndex = epoch;
  }
}
