/**
 * The dashboard's memory of a run: a RunObserver that keeps a bounded history (the last steps,
 * events and world sizes, the workers) and tells its listeners each change as a ServerMessage.
 */
import type { ObservedStep, ObservedWorker, RunObserver } from '../coordinator/observer.js';
import type { CheckpointInfo, EventKind, RunEvent, RunInfo, ServerMessage, Snapshot, StepPoint, WorkerRow, WorkerState, WorldPoint } from './protocol.js';

export interface HistoryLimits {
  readonly steps: number;
  readonly events: number;
  readonly world: number;
  readonly workers: number;
}

export const DEFAULT_LIMITS: HistoryLimits = { steps: 2000, events: 200, world: 2000, workers: 200 };

/** Texts from workers (names, reasons) are cut to this. */
const MAX_TEXT = 300;

interface Tracked {
  readonly view: ObservedWorker;
  state: WorkerState;
  rank: number | null;
}

function cut(text: string): string {
  return text.length > MAX_TEXT ? `${text.slice(0, MAX_TEXT - 1)}…` : text;
}

/** The host of a `host:port` address (`[v6]:port` too); the name when there is no address yet. */
export function hostOf(address: string, name: string): string {
  const at = address.lastIndexOf(':');
  if (address === '' || at <= 0) return name;
  return address.slice(0, at).replace(/^\[(.*)\]$/, '$1');
}

function label(w: ObservedWorker): string {
  return `worker ${w.id} (${w.name})`;
}

function pushBounded<T>(list: T[], item: T, limit: number): void {
  list.push(item);
  if (list.length > limit) list.splice(0, list.length - limit);
}

export class RunHistory implements RunObserver {
  private readonly steps: StepPoint[] = [];
  private readonly events: RunEvent[] = [];
  private readonly world: WorldPoint[] = [];
  private readonly workers = new Map<number, Tracked>();
  private checkpoint: CheckpointInfo | null = null;
  private run: RunInfo;
  private seq = 0;
  private readonly listeners = new Set<(m: ServerMessage) => void>();

  constructor(
    run: { runId: string; steps: number; globalBatch: number },
    private readonly limits: HistoryLimits = DEFAULT_LIMITS,
    private readonly now: () => number = Date.now,
  ) {
    this.run = { runId: run.runId, steps: run.steps, globalBatch: run.globalBatch, firstStep: null, status: 'starting', message: null };
  }

  /** Calls `listener` with every change from now on; returns the unsubscribe. */
  subscribe(listener: (m: ServerMessage) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  snapshot(): Snapshot {
    return { type: 'snapshot', now: this.now(), run: this.run, steps: [...this.steps], events: [...this.events], workers: this.workerRows(), world: [...this.world], checkpoint: this.checkpoint };
  }

  /** The workers table as it stands (heartbeats read now). */
  workersMessage(): ServerMessage {
    return { type: 'workers', now: this.now(), workers: this.workerRows() };
  }

  private workerRows(): WorkerRow[] {
    return [...this.workers.values()].map(({ view, state, rank }) => ({
      id: view.id,
      name: cut(view.name),
      host: cut(hostOf(view.dataAddress, view.name)),
      backend: cut(view.backend),
      rank,
      state,
      lastHeartbeat: view.lastHeartbeat,
      reason: view.gone === undefined ? null : cut(view.gone),
    }));
  }

  private emit(m: ServerMessage): void {
    for (const listener of this.listeners) {
      try {
        listener(m);
      } catch {
        // a listener's failure (a closed socket) is its own
      }
    }
  }

  private event(kind: EventKind, text: string): void {
    const event: RunEvent = { seq: ++this.seq, time: this.now(), kind, text: cut(text) };
    pushBounded(this.events, event, this.limits.events);
    this.emit({ type: 'event', event });
  }

  private setRun(run: RunInfo): void {
    this.run = run;
    this.emit({ type: 'run', run });
  }

  private workersChanged(): void {
    // the oldest rows of workers gone go first when there are too many
    for (const [id, t] of this.workers) {
      if (this.workers.size <= this.limits.workers) break;
      if (t.view.gone !== undefined) this.workers.delete(id);
    }
    this.emit(this.workersMessage());
  }

  onRunStart(run: { runId: string; firstStep: number; steps: number; globalBatch: number; resumedFrom: number | undefined }): void {
    this.setRun({ ...this.run, runId: run.runId, steps: run.steps, globalBatch: run.globalBatch, firstStep: run.firstStep, status: 'training' });
    if (run.resumedFrom !== undefined) this.event('restart', `the coordinator resumed the run at step ${run.resumedFrom}: it goes on from step ${run.firstStep} to ${run.steps}`);
    else this.event('run', `the run starts: steps ${run.firstStep}-${run.steps}, global batch ${run.globalBatch}`);
  }

  onWorkerJoined(worker: ObservedWorker, as: 'waiting' | 'joining' | 'refused'): void {
    const again = [...this.workers.values()].some((t) => t.view.name === worker.name && t.view.id !== worker.id);
    this.workers.set(worker.id, { view: worker, state: as, rank: null });
    const how = as === 'waiting' ? '' : as === 'joining' ? ': it comes in at the next step boundary' : ': sent away, the run has its workers';
    this.event('join', `${label(worker)} joined${again ? ' again' : ''} (${cut(worker.backend)})${how}`);
    this.workersChanged();
  }

  onWorkerGone(worker: ObservedWorker): void {
    const t = this.workers.get(worker.id);
    if (!t) return;
    if (t.state === 'member' || t.state === 'joining') {
      t.state = 'dropped';
      this.event('drop', `${label(worker)} dropped: ${worker.gone ?? 'gone'}`);
    } else if (t.state === 'waiting') {
      t.state = 'left';
      this.event('drop', `${label(worker)} left before the run started: ${worker.gone ?? 'gone'}`);
    }
    t.rank = null;
    this.workersChanged();
  }

  onMembership(m: { generation: number; step: number; members: readonly ObservedWorker[] }): void {
    const ids = new Map(m.members.map((w, rank) => [w.id, rank]));
    for (const w of m.members) if (!this.workers.has(w.id)) this.workers.set(w.id, { view: w, state: 'member', rank: null });
    for (const [id, t] of this.workers) {
      const rank = ids.get(id);
      if (rank !== undefined) {
        t.state = 'member';
        t.rank = rank;
      } else {
        t.rank = null;
        // ready workers left out of the first generation were sent away; a member not in the new one was let go
        if (t.state === 'waiting') t.state = 'refused';
        else if (t.state === 'member') t.state = t.view.gone === undefined ? 'left' : 'dropped';
      }
    }
    const point: WorldPoint = { time: this.now(), worldSize: m.members.length, generation: m.generation };
    pushBounded(this.world, point, this.limits.world);
    this.emit({ type: 'world', point });
    this.event('membership', `generation ${m.generation} from step ${m.step + 1}: ${m.members.length} worker(s) (${m.members.map((w) => cut(w.name)).join(', ')})`);
    this.workersChanged();
  }

  onStep(s: ObservedStep): void {
    const point: StepPoint = {
      step: s.step,
      time: this.now(),
      loss: s.loss,
      learningRate: s.learningRate,
      gradNorm: s.gradNorm,
      tokens: s.tokens,
      samples: s.samples,
      seconds: s.seconds,
      worldSize: s.worldSize,
      generation: s.generation,
      epoch: s.epoch,
      consumedInEpoch: s.consumedInEpoch,
      epochSize: s.epochSize,
      ranks: s.perWorker.map((r) => ({ rank: r.rank, workerId: r.workerId, name: cut(r.name), computeSeconds: r.computeSeconds, reduceSeconds: r.reduceSeconds, tokens: r.tokens })),
    };
    // a step run again after a resume replaces the later points it voids
    while (this.steps.length > 0 && this.steps.at(-1)!.step >= s.step) this.steps.pop();
    pushBounded(this.steps, point, this.limits.steps);
    this.emit({ type: 'step', point });
  }

  onStepAborted(step: number, reason: string): void {
    this.event('abort', `step ${step} aborted: ${reason}`);
  }

  onCheckpoint(c: { step: number; dir: string; bytes: number; seconds: number }): void {
    this.checkpoint = { step: c.step, time: this.now(), dir: cut(c.dir), bytes: c.bytes, seconds: c.seconds };
    this.emit({ type: 'checkpoint', checkpoint: this.checkpoint });
    this.event('checkpoint', `checkpoint of step ${c.step} (${(c.bytes / 2 ** 20).toFixed(1)} MiB in ${c.seconds.toFixed(2)} s)`);
  }

  /** The run is over: complete, stopped as asked, or failed. */
  ended(outcome: { lastStep: number; stoppedEarly: boolean } | { error: string }): void {
    if ('error' in outcome) {
      this.setRun({ ...this.run, status: 'failed', message: cut(outcome.error) });
      this.event('end', `the run stopped: ${outcome.error}`);
    } else {
      const text = outcome.stoppedEarly ? `stopped as asked at step ${outcome.lastStep}` : `complete at step ${outcome.lastStep}`;
      this.setRun({ ...this.run, status: 'ended', message: text });
      this.event('end', `the run is ${text}`);
    }
  }
}
