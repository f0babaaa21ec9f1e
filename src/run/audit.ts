import * as path from 'node:path';
import { loadRunCheckpoint } from '../checkpoint/run-checkpoint.js';
import { JOURNAL_FILE, type JournalEntry, replayJournal } from './journal.js';
import { epochPermutation, type LedgerState } from './ledger.js';
import { type Range, rangesSize, rangeValues, subtractContained, unionDisjoint } from './ranges.js';

/**
 * The exactly-once audit of a run, from its journal. The commits that count are those of
 * the run's final lineage: a `resume {fromStep}` entry voids every commit journaled before
 * it with a step above `fromStep` (the run went back to an earlier state, so those steps'
 * updates are not in its parameters and their records were handed out again).
 */

type CommitEntry = Extract<JournalEntry, { type: 'commit' }>;

const EXAMPLES = 10;

export interface EpochAudit {
  readonly epoch: number;
  /** Records in the epoch. */
  readonly records: number;
  /** Every record consumed, or a later epoch begun. */
  readonly complete: boolean;
  readonly exactlyOnce: number;
  /** Of a complete epoch: records never consumed (a lost sample). */
  readonly missing: number;
  /** Of the epoch in progress: records not consumed yet. */
  readonly pending: number;
  /** Records consumed more than once. */
  readonly repeated: number;
  /** Up to 10 missing and repeated records, as indexes into the run's training records. */
  readonly missingRecords: readonly number[];
  readonly repeatedRecords: readonly number[];
}

export interface CheckpointAgreement {
  readonly checkpoint: string;
  readonly step: number;
  /**
   * `agrees`: its ledger consumed exactly the records of the journal's commits up to its
   * step; `disagrees`: it did not (see `problem`); `unavailable`: it could not be read (kept
   * K may have removed it since; the journal alone still audits the run).
   */
  readonly status: 'agrees' | 'disagrees' | 'unavailable';
  readonly problem?: string;
}

export interface RunAudit {
  readonly journal: string;
  readonly entries: number;
  /** Commits of the final lineage, and commits voided by a resume. */
  readonly commits: number;
  readonly voidCommits: number;
  readonly resumes: readonly { readonly fromStep: number; readonly checkpoint?: string }[];
  /** The checkpoint the run last resumed from, checked against the journal. */
  readonly resumedFrom?: CheckpointAgreement;
  /** A torn last append (a crash mid-append), not counted. */
  readonly tornTail?: { readonly offset: number; readonly bytes: number };
  /** Entries that contradict the ledger's rules (a step committed twice in one lineage, positions outside the epoch...). */
  readonly problems: readonly string[];
  readonly epochs: readonly EpochAudit[];
  /** No problem, nothing missing, nothing repeated. */
  readonly ok: boolean;
}

export class AuditError extends Error {
  override name = 'AuditError';
}

interface Lineage {
  readonly epochSize: number;
  readonly seed: number;
  /** The live commits after each entry; at the last resume, for the checkpoint check. */
  readonly live: CommitEntry[];
  readonly atLastResume: CommitEntry[] | undefined;
  readonly voidCommits: number;
  readonly resumes: { fromStep: number; checkpoint?: string }[];
  readonly problems: string[];
}

function followLineage(file: string, entries: readonly JournalEntry[]): Lineage {
  const start = entries[0];
  if (start?.type !== 'start') throw new AuditError(`${file}: the journal does not begin with a start entry, so its epochs are unknown`);
  let live: CommitEntry[] = [];
  let atLastResume: CommitEntry[] | undefined;
  let voidCommits = 0;
  const resumes: { fromStep: number; checkpoint?: string }[] = [];
  const problems: string[] = [];
  for (const [i, e] of entries.entries()) {
    if (e.type === 'start' && i > 0) problems.push(`entry ${i}: a second start entry`);
    if (e.type === 'resume') {
      const kept = live.filter((c) => c.step <= e.fromStep);
      voidCommits += live.length - kept.length;
      live = kept;
      atLastResume = [...live];
      resumes.push(e.checkpoint === undefined ? { fromStep: e.fromStep } : { fromStep: e.fromStep, checkpoint: e.checkpoint });
    }
    if (e.type === 'commit') {
      const last = live[live.length - 1];
      if (last && e.step <= last.step) problems.push(`entry ${i}: step ${e.step} committed after step ${last.step} with no resume between`);
      if (last && e.epoch < last.epoch) problems.push(`entry ${i}: step ${e.step} is of epoch ${e.epoch}, after a commit of epoch ${last.epoch}`);
      live.push(e);
    }
  }
  return { epochSize: start.epochSize, seed: start.seed, live, atLastResume, voidCommits, resumes, problems };
}

function countByEpoch(commits: readonly CommitEntry[], epochSize: number, problems: string[]): Map<number, Uint32Array> {
  const counts = new Map<number, Uint32Array>();
  for (const c of commits) {
    let perEpoch = counts.get(c.epoch);
    if (!perEpoch) counts.set(c.epoch, (perEpoch = new Uint32Array(epochSize)));
    for (const p of rangeValues(c.positions)) {
      if (p < epochSize) perEpoch[p]!++;
      else {
        problems.push(`step ${c.step}: position ${p} is outside the epoch of ${epochSize} records`);
        break;
      }
    }
  }
  return counts;
}

function auditEpoch(epoch: number, counts: Uint32Array, later: boolean, seed: number): EpochAudit {
  let exactlyOnce = 0;
  let unconsumed = 0;
  let repeated = 0;
  const missingAt: number[] = [];
  const repeatedAt: number[] = [];
  counts.forEach((c, p) => {
    if (c === 1) exactlyOnce++;
    else if (c === 0 && ++unconsumed <= EXAMPLES) missingAt.push(p);
    else if (c > 1 && ++repeated <= EXAMPLES) repeatedAt.push(p);
  });
  const complete = later || unconsumed === 0;
  const perm = missingAt.length + repeatedAt.length > 0 ? epochPermutation(seed, epoch, counts.length) : undefined;
  const toRecords = (positions: number[]) => positions.map((p) => perm![p]!);
  return {
    epoch,
    records: counts.length,
    complete,
    exactlyOnce,
    missing: complete ? unconsumed : 0,
    pending: complete ? 0 : unconsumed,
    repeated,
    missingRecords: complete ? toRecords(missingAt) : [],
    repeatedRecords: toRecords(repeatedAt),
  };
}

function summarize(lineage: Lineage, entries: number): Omit<RunAudit, 'journal' | 'tornTail' | 'resumedFrom'> {
  const problems = [...lineage.problems];
  const counts = countByEpoch(lineage.live, lineage.epochSize, problems);
  const last = Math.max(-1, ...counts.keys());
  const epochs: EpochAudit[] = [];
  for (let e = 0; e <= last; e++) epochs.push(auditEpoch(e, counts.get(e) ?? new Uint32Array(lineage.epochSize), e < last, lineage.seed));
  const ok = problems.length === 0 && epochs.every((e) => e.missing === 0 && e.repeated === 0);
  return { entries, commits: lineage.live.length, voidCommits: lineage.voidCommits, resumes: lineage.resumes, problems, epochs, ok };
}

/** Audits journal entries (the first a start entry); `file` names the journal in errors. */
export function auditEntries(file: string, entries: readonly JournalEntry[]): Omit<RunAudit, 'journal' | 'tornTail' | 'resumedFrom'> {
  return summarize(followLineage(file, entries), entries.length);
}

/** Why a checkpoint's ledger does not hold exactly the records of these commits, or undefined. */
function ledgerMismatch(ledger: LedgerState, commits: readonly CommitEntry[]): string | undefined {
  const earlier = commits.filter((c) => c.epoch < ledger.epoch);
  const consumedBefore = earlier.reduce((n, c) => n + rangesSize(c.positions), 0);
  if (consumedBefore !== ledger.epoch * ledger.records) return `the journal consumed ${consumedBefore} records before epoch ${ledger.epoch}, the checkpoint ${ledger.epoch * ledger.records}`;
  let journaled: Range[] = [];
  try {
    for (const c of commits.filter((c) => c.epoch === ledger.epoch)) journaled = unionDisjoint(journaled, c.positions);
  } catch {
    return `the journal consumes a record twice in epoch ${ledger.epoch}`;
  }
  const consumed = ledger.cursor > 0 ? subtractContained([[0, ledger.cursor]], ledger.returned) : [];
  if (JSON.stringify(consumed) !== JSON.stringify(journaled)) return `in epoch ${ledger.epoch} the checkpoint's ledger consumed other records than the journal's commits`;
  return undefined;
}

/**
 * Audits the run in `runDir`: its journal, and the checkpoint it last resumed from (named
 * in the journal), whose ledger must agree with the commits journaled up to its step.
 */
export async function auditRun(runDir: string): Promise<RunAudit> {
  const journal = path.join(runDir, JOURNAL_FILE);
  const replay = await replayJournal(journal);
  const lineage = followLineage(journal, replay.entries);
  const audit = summarize(lineage, replay.entries.length);
  const lastResume = audit.resumes[audit.resumes.length - 1];
  let resumedFrom: CheckpointAgreement | undefined;
  if (lastResume?.checkpoint !== undefined) {
    const name = lastResume.checkpoint;
    try {
      const { state } = await loadRunCheckpoint(path.join(runDir, name));
      const problem = state.step === lastResume.fromStep ? ledgerMismatch(state.ledger, lineage.atLastResume ?? []) : `it holds step ${state.step}, the journal resumed from step ${lastResume.fromStep}`;
      resumedFrom = problem === undefined ? { checkpoint: name, step: state.step, status: 'agrees' } : { checkpoint: name, step: state.step, status: 'disagrees', problem };
    } catch (err) {
      resumedFrom = { checkpoint: name, step: lastResume.fromStep, status: 'unavailable', problem: (err as Error).message };
    }
  }
  const ok = audit.ok && resumedFrom?.status !== 'disagrees';
  return { journal, ...audit, ...(resumedFrom ? { resumedFrom } : {}), ...(replay.tornTail ? { tornTail: replay.tornTail } : {}), ok };
}

/** The audit as lines for a terminal. */
export function formatAudit(audit: RunAudit): string {
  const lines = [
    `journal ${audit.journal}: ${audit.entries} entries, ${audit.commits} commits counted (${audit.voidCommits} void, ${audit.resumes.length} resumes)` +
      (audit.tornTail ? `; a torn last append of ${audit.tornTail.bytes} bytes at byte ${audit.tornTail.offset} not counted` : ''),
  ];
  for (const e of audit.epochs) {
    const state = e.complete ? `complete: ${e.exactlyOnce} exactly once, ${e.missing} missing` : `in progress: ${e.exactlyOnce} exactly once, ${e.pending} pending`;
    lines.push(`epoch ${e.epoch}: ${e.records} records, ${state}, ${e.repeated} repeated`);
    if (e.missingRecords.length > 0) lines.push(`  missing records (by index in the training records): ${e.missingRecords.join(', ')}${e.missing > e.missingRecords.length ? ', ...' : ''}`);
    if (e.repeatedRecords.length > 0) lines.push(`  repeated records: ${e.repeatedRecords.join(', ')}${e.repeated > e.repeatedRecords.length ? ', ...' : ''}`);
  }
  const r = audit.resumedFrom;
  if (r) lines.push(`resumed from ${r.checkpoint} (step ${r.step}): ${r.status === 'agrees' ? 'its ledger agrees with the journal' : `${r.status}: ${r.problem ?? ''}`}`);
  for (const p of audit.problems) lines.push(`problem: ${p}`);
  lines.push(audit.ok ? 'ok: no record missing or repeated' : 'NOT OK: see above');
  return lines.join('\n');
}
