/**
 * What the dashboard server sends its pages over the WebSocket (JSON, one message a frame):
 * a snapshot on connect, then what changes. The page sends nothing: the dashboard is read-only.
 * Times are the server's Date.now() (milliseconds); each message that carries `now` lets the
 * page correct for its own clock.
 */

import type { RankOfStep } from '../coordinator/observer.js';

/** One rank's part of a step: as the coordinator observed it (a type only, erased for the page). */
export type RankPoint = RankOfStep;

/** One committed step. */
export interface StepPoint {
  readonly step: number;
  /** When it committed. */
  readonly time: number;
  readonly loss: number;
  readonly learningRate: number;
  readonly gradNorm: number;
  readonly tokens: number;
  readonly samples: number;
  readonly seconds: number;
  readonly worldSize: number;
  readonly generation: number;
  readonly epoch: number;
  readonly consumedInEpoch: number;
  readonly epochSize: number;
  readonly ranks: readonly RankPoint[];
}

/**
 * waiting: joined, the run has not started; joining: comes in at the next step boundary;
 * member: of the current generation; dropped: lost while a member (or joining); left: gone
 * otherwise (before the run, or after it was let go); refused: sent away (the run was full).
 */
export type WorkerState = 'waiting' | 'joining' | 'member' | 'dropped' | 'left' | 'refused';

export interface WorkerRow {
  readonly id: number;
  readonly name: string;
  /** From its data-plane address, else its name. */
  readonly host: string;
  readonly backend: string;
  /** In the current generation; null when not a member. */
  readonly rank: number | null;
  readonly state: WorkerState;
  readonly lastHeartbeat: number;
  /** Why it is gone, once it is. */
  readonly reason: string | null;
}

export type EventKind = 'run' | 'restart' | 'join' | 'drop' | 'membership' | 'abort' | 'checkpoint' | 'end';

export interface RunEvent {
  readonly seq: number;
  readonly time: number;
  readonly kind: EventKind;
  readonly text: string;
}

export interface WorldPoint {
  readonly time: number;
  readonly worldSize: number;
  readonly generation: number;
}

export interface CheckpointInfo {
  readonly step: number;
  readonly time: number;
  readonly dir: string;
  readonly bytes: number;
  readonly seconds: number;
}

export interface RunInfo {
  readonly runId: string;
  /** Steps the run trains to. */
  readonly steps: number;
  readonly globalBatch: number;
  /** The first step this coordinator runs (a resumed run starts past 1). */
  readonly firstStep: number | null;
  /** training: steps are being run; ended, failed: the run is over. */
  readonly status: 'starting' | 'training' | 'ended' | 'failed';
  readonly message: string | null;
}

export interface Snapshot {
  readonly type: 'snapshot';
  readonly now: number;
  readonly run: RunInfo;
  /** The last steps (bounded), oldest first. */
  readonly steps: readonly StepPoint[];
  readonly events: readonly RunEvent[];
  readonly workers: readonly WorkerRow[];
  readonly world: readonly WorldPoint[];
  readonly checkpoint: CheckpointInfo | null;
}

export type ServerMessage =
  | Snapshot
  | { readonly type: 'step'; readonly point: StepPoint }
  | { readonly type: 'event'; readonly event: RunEvent }
  | { readonly type: 'workers'; readonly now: number; readonly workers: readonly WorkerRow[] }
  | { readonly type: 'world'; readonly point: WorldPoint }
  | { readonly type: 'checkpoint'; readonly checkpoint: CheckpointInfo }
  | { readonly type: 'run'; readonly run: RunInfo };
