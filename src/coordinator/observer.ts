/**
 * What a coordinator tells about its run as it goes, for whoever watches it (the dashboard,
 * src/dashboard): one small interface, called from a few places of coordinator.ts (where the
 * Prometheus series are updated too). Every call is synchronous and must not throw or block:
 * an observer keeps what it needs and returns.
 */
import type { StepReport } from '../control/messages.js';

/**
 * A worker as the coordinator sees it: a live, read-only view of its session (the last
 * heartbeat and why it is gone change after the call that handed it over).
 */
export interface ObservedWorker {
  /** The coordinator's id of the worker (a worker that joins again gets a new one). */
  readonly id: number;
  /** Its --name (default host:pid). */
  readonly name: string;
  readonly backend: string;
  /** Its data-plane address (host:port), once its instruction stream is open. */
  readonly dataAddress: string;
  /** Date.now() of its last heartbeat or report. */
  readonly lastHeartbeat: number;
  /** Why it is gone, once it is. */
  readonly gone: string | undefined;
}

/** One rank's part of a committed step, from its report. */
export interface RankOfStep {
  readonly rank: number;
  readonly workerId: number;
  readonly name: string;
  /** Forward and backward of its share. */
  readonly computeSeconds: number;
  /** Its ring all-reduce. */
  readonly reduceSeconds: number;
  /** Real tokens (no padding) of its share. */
  readonly tokens: number;
}

export interface ObservedStep {
  readonly step: number;
  /** Loss of the global batch. */
  readonly loss: number;
  readonly learningRate: number;
  readonly gradNorm: number;
  /** Real tokens of the global batch. */
  readonly tokens: number;
  readonly samples: number;
  /** Wall seconds from handing out the records to the commit. */
  readonly seconds: number;
  /** In rank order. */
  readonly perWorker: readonly RankOfStep[];
  readonly worldSize: number;
  readonly generation: number;
  /** The ledger after the commit: its epoch (0-based), records consumed in it, records per epoch. */
  readonly epoch: number;
  readonly consumedInEpoch: number;
  readonly epochSize: number;
}

export interface RunObserver {
  /** The run begins training (workers joined, state restored): `resumedFrom` is the step a resumed run continues from. */
  onRunStart(run: { readonly runId: string; readonly firstStep: number; readonly steps: number; readonly globalBatch: number; readonly resumedFrom: number | undefined }): void;
  /** A worker joined: before the run starts (`waiting`), into a running run at the next step boundary (`joining`), or sent away (`refused`). */
  onWorkerJoined(worker: ObservedWorker, as: 'waiting' | 'joining' | 'refused'): void;
  /** A worker is gone (`worker.gone` says why). */
  onWorkerGone(worker: ObservedWorker): void;
  /** A new generation: the members in rank order. */
  onMembership(m: { readonly generation: number; readonly step: number; readonly members: readonly ObservedWorker[] }): void;
  onStep(s: ObservedStep): void;
  /** A step was aborted: nothing applied, its records back in the ledger. */
  onStepAborted(step: number, reason: string): void;
  onCheckpoint(c: { readonly step: number; readonly dir: string; readonly bytes: number; readonly seconds: number }): void;
}

/** The ranks of a committed step from its members (rank order) and their reports. */
export function ranksOfStep(members: readonly ObservedWorker[], reports: ReadonlyMap<number, StepReport>): RankOfStep[] {
  return members.map((w, rank) => {
    const r = reports.get(w.id);
    return { rank, workerId: w.id, name: w.name, computeSeconds: r?.computeSeconds ?? 0, reduceSeconds: r?.reduceSeconds ?? 0, tokens: r?.tokens ?? 0 };
  });
}

/**
 * The observer with each call fenced: an observer's failure is logged (once per method) and
 * never reaches the run.
 */
export function guardObserver(observer: RunObserver, log: (line: string) => void): RunObserver {
  const failed = new Set<string>();
  const guard = <A extends unknown[]>(name: keyof RunObserver, call: (...args: A) => void) => (...args: A): void => {
    try {
      call(...args);
    } catch (e) {
      if (failed.has(name)) return;
      failed.add(name);
      log(`warning: the run observer failed in ${name} (the run goes on; further failures there are not logged): ${(e as Error).message}`);
    }
  };
  return {
    onRunStart: guard('onRunStart', (r) => observer.onRunStart(r)),
    onWorkerJoined: guard('onWorkerJoined', (w, as) => observer.onWorkerJoined(w, as)),
    onWorkerGone: guard('onWorkerGone', (w) => observer.onWorkerGone(w)),
    onMembership: guard('onMembership', (m) => observer.onMembership(m)),
    onStep: guard('onStep', (s) => observer.onStep(s)),
    onStepAborted: guard('onStepAborted', (step, reason) => observer.onStepAborted(step, reason)),
    onCheckpoint: guard('onCheckpoint', (c) => observer.onCheckpoint(c)),
  };
}
