/**
 * The coordinator of a synchronous data-parallel run: it owns the data (a RecordStore),
 * the exactly-once ledger and its journal, and the checkpoints; workers own the replicas.
 *
 * A step, as it binds (see also src/train/trainer.ts):
 * 1. the ledger hands out the step's records; each rank gets a contiguous share of the
 *    global batch with its position (`firstSample`), so masks and dropout do not depend on
 *    which worker has which sample; with --balance dynamic the shares follow the workers'
 *    measured speeds and the last part of the batch is claimed in pieces (see shares.ts);
 *    a step commits only if its records were computed exactly once between the workers;
 * 2. every worker reduces its gradients with the others and reports;
 * 3. when every report is in and good, the commit is journaled (fsynced), then sent:
 *    workers apply the step only now. A failed or late step is aborted: nothing was
 *    applied, and its records go back to the ledger.
 *
 * Membership is elastic: a lost worker's step is aborted and run again by the others in a
 * new generation (down to --min-workers; below it the coordinator waits for workers to come
 * back), and workers that join come in at a step boundary with a live member's state.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { JoinToken, TlsMaterial } from '../comm/auth.js';
import { checkpointName, type LoadedRunCheckpoint, loadLatestCheckpoint, saveRunCheckpoint } from '../checkpoint/run-checkpoint.js';
import type { JsonValue } from '../checkpoint/run-checkpoint.js';
import type { ClaimReply, ClaimRequest, StateChunk, StepReport } from '../control/messages.js';
import type { RunSpec } from '../control/run-spec.js';
import { ControlServer, type WorkerSession } from '../control/server.js';
import { type ReplicaState, StateAssembler, stateChunks } from '../control/state-transfer.js';
import { checkApplication, splitByDocument } from '../data/dataset.js';
import { RecordStore } from '../data/record-store.js';
import { importWeights } from '../checkpoint/convert.js';
import { ConvertError, openLayersModelFolder } from '../checkpoint/model-sources.js';
import { ConfigError } from '../model/config.js';
import { createOptimizer } from '../optim/config.js';
import { type CommittedStep, DataLedger } from '../run/ledger.js';
import { Journal, JOURNAL_FILE, JOURNAL_FORMAT, type JournalEntry } from '../run/journal.js';
import type { CoordinatorMetrics } from '../metrics/metrics.js';
import { ranksOfStep, type RunObserver } from './observer.js';
import { type Balance, claimableSamples, claimSize, ShareBalancer, stepOrder } from './shares.js';
import type { LogFields, LogFn } from '../log/logger.js';

export class CoordinatorError extends Error {
  override name = 'CoordinatorError';
}

export interface CoordinatorOptions {
  readonly runDir: string;
  readonly runId: string;
  readonly dataDir: string;
  /** Everything of the run spec but what the coordinator fills in from the data and the run. */
  readonly spec: Omit<RunSpec, 'runId' | 'manifest' | 'perTokenFeature'>;
  readonly globalBatch: number;
  /** Train until this many steps have committed. */
  readonly steps: number;
  readonly checkpointEvery: number;
  readonly keepCheckpoints: number;
  /** Every this many steps the replicas' parameter digests are compared (0: never). */
  readonly checksumEvery: number;
  /** How a step's batch is split across the ranks (default 'dynamic'; see shares.ts). */
  readonly balance?: Balance;
  readonly workers: number;
  /** A lost worker's step is run again by the others while at least this many are left. */
  readonly minWorkers: number;
  readonly token: JoinToken;
  readonly tls?: TlsMaterial | undefined;
  readonly host?: string;
  readonly port?: number;
  /** How long to wait for the workers to join. */
  readonly joinTimeoutMs: number;
  /** Below --min-workers: how long to wait for enough workers to join again. */
  readonly rejoinTimeoutMs: number;
  readonly heartbeatTimeoutMs: number;
  /**
   * A worker name that failed twice within FAILURE_MEMORY_MS waits this long before it is
   * taken in again, doubling with each further failure (up to MAX_BACKOFF_MS): a host that
   * keeps failing costs the run a restart now and then, not every few steps.
   */
  readonly failureBackoffMs: number;
  /** Worker failures (lost members) the run survives; one more and it checkpoints and stops (0: no cap). */
  readonly maxFailures: number;
  readonly stepTimeoutMs: number;
  /**
   * `--resume`: the run directory must hold a run to continue. Without it a run directory
   * that holds one is continued all the same (a coordinator restarted by Kubernetes runs
   * the same command again), and one that holds none starts a new run.
   */
  readonly resume: boolean;
  /**
   * `--init`: a tfjs LayersModel folder (ours, e.g. from `pretrain convert`) whose weights the
   * run starts from instead of the seeded initialization; checked against the run's model.
   * Recorded in the journal: a resumed run reads it again only when it has no checkpoint.
   */
  readonly init?: string | undefined;
  /** A log line (its text, and for the JSON log its fields and level; see src/log/logger.ts). */
  readonly log: LogFn;
  readonly logEvery: number;
  /** Called once the control server listens (start local workers here). */
  readonly onListening?: (address: string) => void;
  /** Aborted: the run ends after the step in progress, checkpointed (before the run starts: at once). */
  readonly stop?: AbortSignal;
  /** The run's Prometheus series (src/metrics), when its metrics are served. */
  readonly metrics?: CoordinatorMetrics | undefined;
  /** Told of the run's steps, members, workers and checkpoints as they happen (the dashboard). */
  readonly observer?: RunObserver | undefined;
}

export interface CoordinatorSummary {
  readonly runDir: string;
  readonly firstStep: number;
  readonly lastStep: number;
  /** Loss of the global batch at each step run here. */
  readonly losses: number[];
  readonly tokensPerSecond: number;
  /** Positions computed a second, padding included (each piece padded to its longest record): what a peer on full-length sequences counts. */
  readonly positionsPerSecond: number;
  /** Over the steps but the first: the slowest rank's all-reduce seconds as a share of the step's wall time. */
  readonly allreduceShare: number;
  /**
   * Means per step over the steps but the first, in seconds: the step's wall time and, along
   * its critical path (the rank whose forward+backward took longest), forward+backward, the
   * copy of the gradients out of tfjs, the all-reduce (that rank waits for nobody), the
   * optimizer update; `wait`: how much longer the all-reduce took on the rank that waited
   * most (it finished its share sooner); `other` is the rest (data, messages, the journal's
   * fsync, clipping).
   */
  readonly breakdown: StepBreakdown;
  /**
   * The coordinator process's CPU seconds (all its threads, user and system) per wall second
   * over the steps tokensPerSecond counts: what it takes from the workers' cores while they train.
   */
  readonly coordinatorCpuShare: number;
  /** How many times the replicas' parameter digests were compared (all equal, or the run stops). */
  readonly replicaChecks: number;
  readonly checkpoints: string[];
  readonly stoppedEarly: boolean;
}

/** Failures older than this are forgiven. */
const FAILURE_MEMORY_MS = 30 * 60_000;
const MAX_BACKOFF_MS = 5 * 60_000;

/**
 * When a worker of this name may come in again: a first failure is free (a pod restarting
 * after a node drain is normal), then the backoff doubles per failure within the memory.
 */
export function admissibleAt(failures: readonly number[], now: number, baseMs: number): number {
  const recent = failures.filter((t) => now - t < FAILURE_MEMORY_MS);
  if (recent.length < 2 || baseMs <= 0) return 0;
  return Math.max(...recent) + Math.min(MAX_BACKOFF_MS, baseMs * 2 ** (recent.length - 2));
}

export interface StepBreakdown {
  readonly stepSeconds: number;
  readonly forwardBackwardSeconds: number;
  readonly copySeconds: number;
  readonly reduceSeconds: number;
  readonly waitSeconds: number;
  readonly applySeconds: number;
  readonly otherSeconds: number;
  /**
   * The share of the workers' time spent in forward+backward: the sum over the ranks and
   * the steps of their forward+backward seconds over (ranks x the steps' wall time). What
   * the runtime costs around the model's own work, read within one run, so a machine whose
   * cores change speed between runs does not blur it.
   */
  readonly busyShare: number;
  /**
   * Forward+backward seconds per sample, summed over the ranks: the compute speed. For two
   * runs on the same records with R1 and R2 ranks, tokens/s is proportional to ranks x busy
   * share / this, so the scaling efficiency (tokens/s ratio over R2/R1) is the busy share
   * ratio times the inverse ratio of this.
   */
  readonly forwardBackwardPerSampleSeconds: number;
}

interface Waiter {
  readonly reports: Map<number, StepReport>;
  resolve(): void;
  reject(e: Error): void;
}

export class Coordinator {
  private server: ControlServer | undefined;
  private readonly ready: WorkerSession[] = [];
  /** Workers that joined a running run, waiting for the next step boundary. */
  private joiners: WorkerSession[] = [];
  /** The workers of the current generation: only their loss matters to the run. */
  private members: readonly WorkerSession[] = [];
  private waiter: Waiter | undefined;
  /** The step whose reports are awaited, and from whom. */
  private expected: { step: number; workers: readonly WorkerSession[] } | undefined;
  private joinWaiter: (() => void) | undefined;
  private lost: WorkerSession | undefined;
  private state: { worker: WorkerSession; assembler: StateAssembler; resolve(s: ReplicaState): void; reject(e: Error): void } | undefined;
  private generation = 0;
  private step = 0;
  /** When workers of each name were lost: the backoff of a host that keeps failing. */
  private readonly failures = new Map<string, number[]>();
  private failureCount = 0;
  private readonly balancer: ShareBalancer;
  /** The claimable part of the step in progress: records [next, end) of its batch, for its members. */
  private pool: { step: number; generation: number; ranks: number; next: number; end: number; records: readonly number[]; examples: readonly Uint8Array[]; answered: Map<number, { sequence: number; reply: ClaimReply }> } | undefined;

  constructor(private readonly o: CoordinatorOptions) {
    this.balancer = new ShareBalancer(o.balance ?? 'dynamic');
  }

  /** Where the run stands, for every log line: the generation and the last committed step (a line about another step names it). */
  get logContext(): LogFields {
    return { generation: this.generation, step: this.step };
  }

  async run(): Promise<CoordinatorSummary> {
    const o = this.o;
    const store = await RecordStore.open(o.dataDir);
    let journal: Journal | undefined;
    let monitor: NodeJS.Timeout | undefined;
    try {
      checkApplication(store.manifest, o.spec.application, o.dataDir);
      const { documents, lengths } = await store.scan();
      const split = splitByDocument(documents);
      if (split.train.length === 0) throw new CoordinatorError(`${o.dataDir} has no training records`);
      await fs.mkdir(o.runDir, { recursive: true });
      const journalFile = path.join(o.runDir, JOURNAL_FILE);
      const hasJournal = await fs.stat(journalFile).then(() => true, () => false);
      if (!hasJournal && o.resume) throw new CoordinatorError(`${o.runDir} holds no run to resume (no ${JOURNAL_FILE})`);
      const resuming = hasJournal;
      if (resuming && !o.resume) o.log(`${o.runDir} holds a run (${JOURNAL_FILE}): continuing it`);
      let checkpoint: LoadedRunCheckpoint | undefined;
      if (resuming) {
        const latest = await loadLatestCheckpoint(o.runDir, { onSkip: (s) => o.log(`warning: skipping checkpoint ${s.name}: ${s.reason}`, { checkpoint: s.name }, 'warn') });
        checkpoint = latest.checkpoint;
        if (!checkpoint) o.log(`no usable checkpoint in ${o.runDir} (${'reason' in latest ? latest.reason : ''}): starting again from step 0`, undefined, 'warn');
      }
      const opened = await Journal.open(journalFile);
      journal = opened.journal;
      o.metrics?.restarts(opened.replay.entries.filter((e) => e.type === 'resume').length + (o.resume ? 1 : 0));
      // what the journal committed after the checkpoint: live replicas may hold it
      const laterCommits = commitsAfter(opened.replay.entries, checkpoint?.step ?? 0);
      const lastCommitted = laterCommits.at(-1)?.step ?? checkpoint?.step ?? 0;
      const ledger = checkpoint
        ? DataLedger.fromState(checkpoint.state.ledger, split.train)
        : new DataLedger({ recordIds: split.train, seed: o.spec.seed, globalBatch: o.globalBatch });
      if (!hasJournal) await journal.append({ type: 'start', format: JOURNAL_FORMAT, epochSize: split.train.length, globalBatch: o.globalBatch, seed: o.spec.seed, settings: runSettings(o) });
      this.step = checkpoint?.step ?? 0;
      // the journal's start entry has the settings from the first step on; journals written
      // before it did are checked against the checkpoint's config
      const started = opened.replay.entries.find((e) => e.type === 'start');
      if (started?.settings) checkSameRun(started.settings, journalFile, o);
      else if (checkpoint) checkSameRun(settingsOfConfig(checkpoint.state.config), checkpoint.dir, o);
      // the initial weights are read only for a run that starts from step 0: a resumed run's checkpoint has them
      const initDir = o.init ?? (typeof started?.settings?.['init'] === 'string' ? started.settings['init'] : undefined);
      const initial = !checkpoint && initDir !== undefined ? await readInitialState(initDir, o.spec) : undefined;
      if (initial) o.log(`initial weights: ${initial.params.length} weights from ${initDir} (--init)${initial.notes.length > 0 ? `; ${initial.notes.join('; ')}` : ''}`, { init: initDir });
      if (lastCommitted >= o.steps) throw new CoordinatorError(`the run in ${o.runDir} has done ${lastCommitted} steps already; ask for more with --steps (now ${o.steps})`);
      const spec: RunSpec = { ...o.spec, runId: o.runId, manifest: store.manifest, perTokenFeature: store.perTokenFeature };
      const config: JsonValue = JSON.parse(JSON.stringify({ spec: { ...spec, manifest: undefined }, globalBatch: o.globalBatch })) as JsonValue;

      this.server = await ControlServer.start({
        runId: o.runId,
        token: o.token,
        tls: o.tls,
        host: o.host,
        port: o.port,
        handlers: {
          onReady: (s) => {
            if (this.members.length > 0) {
              // a worker joining a running run comes in at the next step, up to --workers
              const wanted = o.workers - this.members.filter((w) => !w.gone).length - this.joiners.filter((w) => !w.gone).length;
              if (wanted <= 0) {
                o.log(`worker ${s.id} (${s.name}) joined, but the run has its ${o.workers} worker(s); it is sent away`, { workerId: s.id, workerName: s.name }, 'warn');
                o.observer?.onWorkerJoined(s, 'refused');
                this.send(s, { kind: 'stop', stop: { reason: `the run already has its ${o.workers} worker(s)` } });
              } else {
                const wait = this.admissibleAt(s, Date.now()) - Date.now();
                const held = wait > 0 ? `; it failed ${this.recentFailures(s)} times lately, so it waits ${Math.ceil(wait / 1000)} s first (--failure-backoff)` : '';
                o.log(`worker ${s.id} (${s.name}, ${s.backend}) joined the running run: it comes in at a step boundary${held}`, { workerId: s.id, workerName: s.name, backend: s.backend, backoffSeconds: wait > 0 ? Math.ceil(wait / 1000) : undefined });
                this.joiners.push(s);
                o.observer?.onWorkerJoined(s, 'joining');
              }
              return;
            }
            this.ready.push(s);
            o.observer?.onWorkerJoined(s, 'waiting');
            o.log(`worker ${s.id} (${s.name}, ${s.backend}) joined: ${this.ready.length} of ${o.workers}`, { workerId: s.id, workerName: s.name, backend: s.backend, joined: this.ready.length, workers: o.workers });
            this.joinWaiter?.();
          },
          onGone: (s) => this.onGone(s),
          // the server found the session by the report's workerId: who sent it is who it names
          onReport: (r) => this.onReport(r),
          onClaim: (request) => this.onClaim(request),
          onStateChunk: (chunk: StateChunk, s) => {
            const asked = this.state;
            if (!asked) throw new CoordinatorError('state that was not asked for');
            if (s.id !== asked.worker.id || chunk.generation !== this.generation || chunk.step !== this.step) {
              throw new CoordinatorError(`state of worker ${s.id}, step ${chunk.step}, generation ${chunk.generation}; asked worker ${asked.worker.id} for step ${this.step} of generation ${this.generation}`);
            }
            asked.assembler.add(chunk);
          },
          onStateEnd: (s, error) => {
            if (!this.state || s.id !== this.state.worker.id) return;
            if (error) this.state.reject(error);
            else if (this.state.assembler.complete) this.state.resolve(this.state.assembler.state());
            else this.state.reject(new CoordinatorError('the state upload ended before every array arrived'));
          },
        },
      });
      o.log(`coordinator: run ${o.runId} in ${o.runDir}, listening on ${this.server.address} for ${o.workers} worker(s)`, { runDir: o.runDir, address: this.server.address, workers: o.workers });
      o.onListening?.(this.server.address);
      await this.waitForWorkers();
      monitor = setInterval(() => this.checkHeartbeats(), Math.min(1000, o.heartbeatTimeoutMs / 3));

      // ranks in join order; a resumed run continues from live replicas that hold the
      // journal's last committed step, else sends every worker the checkpoint
      let workers = this.ready.filter((w) => !w.gone).slice(0, o.workers);
      for (const extra of this.ready.filter((w) => !w.gone).slice(o.workers)) this.send(extra, { kind: 'stop', stop: { reason: 'the run has its workers' } });
      // a run from step 0 with --init (or one resumed before its first checkpoint): the imported weights
      let restoreFrom: ReplicaState | undefined = checkpoint ?? initial;
      if (resuming) {
        // the step every live replica holds, if they agree: the journal's last commit, or the
        // one before it when the coordinator died between journaling a commit and the workers
        // receiving it (that commit is then void: its records run again, nothing was applied)
        const held = workers.map((w) => (w.heldRunId === o.runId ? w.heldStep : -1));
        const liveStep = held.every((h) => h === held[0]) ? held[0]! : -1;
        const fromLive = liveStep > this.step && liveStep <= lastCommitted;
        if (fromLive) {
          for (const commit of laterCommits) if (commit.step <= liveStep) ledger.redo(commit);
          this.step = liveStep;
          restoreFrom = undefined;
          const unapplied = lastCommitted === liveStep + 1 ? `commit of step ${lastCommitted} never reached them (the coordinator stopped first), so it is void and runs again` : `commits of steps ${liveStep + 1}-${lastCommitted} never reached them (the coordinator stopped first), so they are void and run again`;
          o.log(`resuming from the live workers, which hold step ${liveStep}${liveStep === lastCommitted ? ", the journal's last commit: no step lost" : `: the journal's ${unapplied}`}`);
          await journal.append({ type: 'resume', fromStep: this.step });
        } else {
          if (lastCommitted > this.step) o.log(`the workers do not all hold step ${lastCommitted}, the journal's last commit: resuming from ${checkpoint ? checkpoint.name : 'the start'}, steps ${this.step + 1}-${lastCommitted} run again`);
          await journal.append(checkpoint ? { type: 'resume', fromStep: this.step, checkpoint: checkpoint.name } : { type: 'resume', fromStep: 0 });
        }
      }
      // generations only grow, across coordinator restarts too: workers fence by them
      this.generation = Math.max(0, ...workers.map((w) => w.heldGeneration));
      const firstStep = this.step + 1;
      o.observer?.onRunStart({ runId: o.runId, firstStep, steps: o.steps, globalBatch: o.globalBatch, resumedFrom: resuming ? this.step : undefined });
      const runJson = JSON.stringify(spec);
      /** A new generation: ranks in the given order, the ring re-formed; `restore` sends the checkpoint along. */
      /**
       * A new generation: ranks in the given order, the ring re-formed. Members in `restore`
       * are sent `state` (a checkpoint's, or a live replica's for workers joining a run).
       */
      const assign = (members: WorkerSession[], state: ReplicaState | undefined, restore: readonly WorkerSession[]): void => {
        this.members = members;
        this.generation++;
        o.metrics?.generation(this.generation, members.length);
        o.observer?.onMembership({ generation: this.generation, step: this.step, members });
        this.lost = undefined;
        const peers = members.map((w) => w.dataAddress);
        members.forEach((w, rank) => {
          const restoring = state !== undefined && restore.includes(w);
          this.send(w, { kind: 'assign', assign: { generation: this.generation, rank, peers, runJson, restoreStep: restoring ? this.step : 0, stateFollows: restoring } });
          if (restoring) for (const chunk of stateChunks(state, { workerId: w.id, generation: this.generation, step: this.step })) this.send(w, { kind: 'state', state: chunk });
        });
      };
      assign(workers, restoreFrom, workers);

      const losses: number[] = [];
      const checkpoints: string[] = [];
      let tokens = 0;
      let positions = 0;
      let seconds = 0;
      let replicaChecks = 0;
      let reduceSeconds = 0;
      const phases: Phases = { forwardBackward: 0, copy: 0, reduce: 0, wait: 0, apply: 0, busy: 0, fbAllRanks: 0, samples: 0, steps: 0 };
      // CPU microseconds of this process over the measured steps' wall time (as tokens/s: not the first step, no checkpoint)
      let coordinatorCpuMicros = 0;
      let window = { loss: 0, steps: 0, seconds: 0, tokens: 0 };
      let lastCheckpointStep = this.step;
      let stoppedEarly = false;
      const saveCheckpoint = async (): Promise<void> => {
        const checkpointStarted = performance.now();
        // any live member holds the committed state; one lost during the upload is replaced by the next
        let replica: ReplicaState | undefined;
        const errors: string[] = [];
        for (const w of workers.filter((m) => !m.gone)) {
          replica = await this.requestState(w).catch((e: Error) => {
            errors.push(e.message);
            return undefined;
          });
          if (replica) break;
        }
        if (!replica) throw new CoordinatorError(`no live worker could send its state for the checkpoint of step ${this.step}: ${errors.join('; ') || 'none left'}`);
        const saved = await saveRunCheckpoint(
          o.runDir,
          { state: { step: this.step, generation: this.generation, ledger: ledger.state(), rng: { seed: o.spec.seed }, config }, params: replica.params, optimizer: replica.optimizer },
          { keep: o.keepCheckpoints },
        );
        await journal!.append({ type: 'checkpoint', step: this.step, dir: checkpointName(this.step) });
        checkpoints.push(saved.dir);
        lastCheckpointStep = this.step;
        o.metrics?.checkpointSaved(this.step, (performance.now() - checkpointStarted) / 1000, saved.bytes);
        o.observer?.onCheckpoint({ step: this.step, dir: saved.dir, bytes: saved.bytes, seconds: (performance.now() - checkpointStarted) / 1000 });
        o.log(`checkpoint: step ${this.step} -> ${saved.dir} (${(saved.bytes / 2 ** 20).toFixed(1)} MiB)`, { checkpoint: saved.dir, bytes: saved.bytes, seconds: (performance.now() - checkpointStarted) / 1000 });
      };

      for (let step = firstStep; step <= o.steps; step++) {
        const now = Date.now();
        const joining = this.joiners.filter((w) => !w.gone && this.admissibleAt(w, now) <= now);
        this.joiners = this.joiners.filter((w) => !w.gone && !joining.includes(w));
        if (joining.length > 0) {
          // at a step boundary every member holds the last committed step: one's state is everyone's
          const source = workers.find((w) => !w.gone);
          const state = await (source ? this.requestState(source) : Promise.reject(new CoordinatorError('no live member'))).catch((e: Error) => {
            o.log(`could not take the state for the joining worker(s) (${e.message}); they come in later`, { step }, 'warn');
            this.joiners.push(...joining);
            return undefined;
          });
          if (state) {
            workers = [...workers.filter((w) => !w.gone), ...joining];
            o.log(`step ${step}: ${joining.length} worker(s) join; going on with ${workers.length} (generation ${this.generation + 1})`, { step, joining: joining.length, workers: workers.length });
            assign(workers, state, joining);
          }
        }
        const t0 = performance.now();
        const cpuAtStep = process.cpuUsage();
        const handed = ledger.next(step);
        if (!handed) throw new CoordinatorError(`the ledger has no records for step ${step}`);
        // the records in their places in the global batch: the shorter half last (see stepOrder)
        const ordered = stepOrder(handed.records, lengths);
        const n = ordered.length;
        const examples = await Promise.all(ordered.map((id) => store.read(id)));
        // dropout counts every sample's positions over the step's longest record, whatever its piece is padded to
        const length = ordered.reduce((longest, id) => Math.max(longest, lengths[id]!), 1);
        // the digest of the state before this step: that of the step before it, committed everywhere
        const digest = o.checksumEvery > 0 && (step - 1) % o.checksumEvery === 0 && step > 1;
        const reports = this.expectReports(step, workers);
        const claimable = claimableSamples(n, workers.length, this.balancer.balance);
        const shares = this.balancer.split(n - claimable, length, workers.map((w) => w.id));
        this.pool = claimable > 0 ? { step, generation: this.generation, ranks: workers.length, next: n - claimable, end: n, records: ordered, examples, answered: new Map() } : undefined;
        for (let rank = 0; rank < workers.length; rank++) {
          const { from, to } = shares[rank]!;
          const records = ordered.slice(from, to).map((id, i) => ({ id, example: Buffer.from(examples[from + i]!) }));
          this.send(workers[rank]!, { kind: 'work', work: { generation: this.generation, step, epoch: handed.epoch, firstSample: from, globalBatch: n, records, length, digest, claim: claimable > 0 } });
        }
        let results: Map<number, StepReport>;
        try {
          results = await reports;
          const computed = [...results.values()].reduce((sum, r) => sum + r.samples, 0);
          const unclaimed = this.pool ? this.pool.end - this.pool.next : 0;
          if (computed !== n || unclaimed > 0) {
            throw new CoordinatorError(`step ${step}: the workers computed ${computed} of its ${n} records${unclaimed > 0 ? ` and left ${unclaimed} unclaimed` : ''}; nothing was applied (a defect: please report it)`);
          }
        } catch (e) {
          this.pool = undefined;
          ledger.abort(step);
          o.metrics?.stepAborted();
          o.observer?.onStepAborted(step, (e as Error).message);
          for (const w of workers) if (!w.gone) this.send(w, { kind: 'abort', abort: { generation: this.generation, step, reason: (e as Error).message } });
          // nothing of the step was applied anywhere: the members still alive hold the state of
          // the last committed step, so the ring re-forms with them and the step runs again
          let survivors = await this.settle(workers);
          const lost = workers.filter((w) => !survivors.includes(w));
          for (const w of lost) this.recordFailure(w);
          const capped = o.maxFailures > 0 && this.failureCount > o.maxFailures;
          let joinersMakeUp = false;
          if (!capped && survivors.length > 0 && survivors.length < o.minWorkers && lost.length > 0) {
            o.log(`step ${step} aborted: ${(e as Error).message}; ${survivors.length} worker(s) left, fewer than --min-workers ${o.minWorkers}: waiting up to ${Math.round(o.rejoinTimeoutMs / 1000)} s for workers to join (--rejoin-timeout)`, { step, reason: (e as Error).message, workers: survivors.length }, 'warn');
            const waited = await this.waitForMembers(survivors, o.minWorkers);
            survivors = waited.alive;
            joinersMakeUp = waited.enough;
          }
          // the joiners come in at the top of the loop, with a survivor's state
          if (!capped && (survivors.length >= o.minWorkers || joinersMakeUp) && survivors.length < workers.length) {
            o.log(`step ${step} aborted: ${(e as Error).message}; going on with ${survivors.length} worker(s) (generation ${this.generation + 1})`, { step, reason: (e as Error).message, workers: survivors.length }, 'warn');
            workers = survivors;
            assign(workers, undefined, []);
            step--;
            continue;
          }
          const live = workers.find((w) => !w.gone);
          let saved = '';
          if (live && this.step > lastCheckpointStep) {
            try {
              await saveCheckpoint();
              saved = `; the last committed step (${this.step}) is checkpointed`;
            } catch (ce) {
              saved = `; checkpointing step ${this.step} failed too (${(ce as Error).message})`;
            }
          }
          const failure = `step ${step} failed: ${(e as Error).message}${saved}`;
          for (const w of workers) if (!w.gone) this.send(w, { kind: 'stop', stop: { reason: `the coordinator stops the run: ${failure}` } });
          const below = capped
            ? ` (${this.failureCount} worker failures, more than --max-failures ${o.maxFailures}: look at the workers' logs and machines before resuming)`
            : survivors.length < o.minWorkers
              ? ` (${survivors.length} worker(s) left, --min-workers ${o.minWorkers}${survivors.length > 0 ? `, and too few joined within ${Math.round(o.rejoinTimeoutMs / 1000)} s` : ''})`
              : '';
          throw new CoordinatorError(`${failure}${below}; continue the run with \`coordinator start --run-dir ${o.runDir}\` (the same command)`);
        }
        if (digest) {
          const divergence = replicaDivergence(workers, results);
          if (divergence) {
            ledger.abort(step);
            for (const w of workers) this.send(w, { kind: 'stop', stop: { reason: `the replicas diverged: ${divergence}` } });
            throw new CoordinatorError(`the replicas diverged after step ${step - 1} (${divergence}): a defect, or a worker's memory is failing; the run stops at its last checkpoint (step ${lastCheckpointStep})`);
          }
          replicaChecks++;
        }
        this.pool = undefined;
        for (const w of workers) {
          const r = results.get(w.id)!;
          // a worker that predates `positions` is counted at the step's longest record
          this.balancer.observe(w.id, r.positions > 0 ? r.positions : r.samples * length, r.forwardBackwardSeconds, r.applySeconds + r.copySeconds);
        }
        const committed = ledger.commit(step);
        await journal.append({ type: 'commit', step: committed.step, epoch: committed.epoch, positions: committed.positions.map((r) => [r[0], r[1]] as [number, number]) });
        for (const w of workers) this.send(w, { kind: 'commit', commit: { generation: this.generation, step } });
        this.step = step;
        const report = results.get(workers[0]!.id)!;
        const elapsed = (performance.now() - t0) / 1000;
        losses.push(report.loss);
        // real tokens (no padding), counted by the workers that decoded them
        const all = [...results.values()];
        const stepTokens = all.reduce((sum, r) => sum + r.tokens, 0);
        o.metrics?.stepCommitted({ seconds: elapsed, samples: n, tokens: stepTokens, loss: report.loss, learningRate: report.learningRate, gradNorm: report.gradNorm, step, epoch: ledger.epoch, consumedInEpoch: ledger.consumedInEpoch, epochSize: ledger.epochSize });
        o.observer?.onStep({ step, loss: report.loss, learningRate: report.learningRate, gradNorm: report.gradNorm, tokens: stepTokens, samples: n, seconds: elapsed, perWorker: ranksOfStep(workers, results), worldSize: workers.length, generation: this.generation, epoch: ledger.epoch, consumedInEpoch: ledger.consumedInEpoch, epochSize: ledger.epochSize });
        if (step > firstStep || o.steps === firstStep) {
          tokens += stepTokens;
          positions += all.reduce((sum, r) => sum + r.positions, 0);
          seconds += elapsed;
          const cpu = process.cpuUsage(cpuAtStep);
          coordinatorCpuMicros += cpu.user + cpu.system;
          const critical = all.reduce((a, b) => (b.forwardBackwardSeconds > a.forwardBackwardSeconds ? b : a));
          const longestReduce = Math.max(...all.map((r) => r.reduceSeconds));
          reduceSeconds += longestReduce;
          phases.forwardBackward += critical.forwardBackwardSeconds;
          phases.copy += critical.copySeconds;
          phases.reduce += critical.reduceSeconds;
          phases.wait += longestReduce - critical.reduceSeconds;
          phases.apply += Math.max(...all.map((r) => r.applySeconds));
          const fbAllRanks = all.reduce((sum, r) => sum + r.forwardBackwardSeconds, 0);
          phases.busy += fbAllRanks / all.length;
          phases.fbAllRanks += fbAllRanks;
          phases.samples += n;
          phases.steps++;
        }
        window = { loss: window.loss + report.loss, steps: window.steps + 1, seconds: window.seconds + elapsed, tokens: window.tokens + stepTokens };
        if (step === firstStep || step % o.logEvery === 0 || step === o.steps) {
          const remaining = ((o.steps - step) * window.seconds) / window.steps;
          o.log(
            `step ${String(step).padStart(String(o.steps).length)}/${o.steps}  epoch ${handed.epoch}  loss ${(window.loss / window.steps).toFixed(4)}  grad-norm ${report.gradNorm.toFixed(3)}  ` +
              `tokens/s ${Math.round(window.tokens / window.seconds)}  workers ${workers.length}  ETA ${Math.round(remaining)} s`,
            // the line's numbers as they are (the loss is the mean over the steps since the last line)
            { step, steps: o.steps, epoch: handed.epoch, loss: window.loss / window.steps, lossSteps: window.steps, gradNorm: report.gradNorm, learningRate: report.learningRate, tokensPerSecond: window.tokens / window.seconds, workers: workers.length, etaSeconds: Math.round(remaining) },
          );
          window = { loss: 0, steps: 0, seconds: 0, tokens: 0 };
        }
        const stop = o.stop?.aborted ?? false;
        if (step % o.checkpointEvery === 0 || step === o.steps || stop) await saveCheckpoint();
        if (stop && step < o.steps) {
          stoppedEarly = true;
          o.log(`stopping at step ${step} as asked; continue with \`coordinator start --run-dir ${o.runDir}\``, { step });
          break;
        }
      }
      for (const w of workers) this.send(w, { kind: 'stop', stop: { reason: stoppedEarly ? 'the coordinator was asked to stop' : 'the run is complete' } });
      return {
        runDir: o.runDir,
        firstStep,
        lastStep: this.step,
        losses,
        tokensPerSecond: seconds > 0 ? tokens / seconds : 0,
        positionsPerSecond: seconds > 0 ? positions / seconds : 0,
        allreduceShare: seconds > 0 ? reduceSeconds / seconds : 0,
        breakdown: breakdownOf(seconds, phases),
        replicaChecks,
        coordinatorCpuShare: seconds > 0 ? coordinatorCpuMicros / 1e6 / seconds : 0,
        checkpoints,
        stoppedEarly,
      };
    } catch (e) {
      // every worker still listening learns why, instead of seeing its stream end unexplained
      for (const s of this.server?.sessions.values() ?? []) if (!s.gone && s.stream) this.send(s, { kind: 'stop', stop: { reason: `the coordinator stopped: ${(e as Error).message}` } });
      throw e;
    } finally {
      clearInterval(monitor);
      this.waiter?.reject(new CoordinatorError('the coordinator is stopping'));
      await this.server?.close();
      await journal?.close();
      await store.close();
    }
  }

  private readonly stopped = new Set<number>();

  private send(w: WorkerSession, instruction: Parameters<ControlServer['send']>[1]): void {
    if (this.stopped.has(w.id)) return;
    if (instruction.kind === 'stop') this.stopped.add(w.id);
    this.server!.send(w.id, instruction);
  }

  private waitForWorkers(): Promise<void> {
    const o = this.o;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.joinWaiter = undefined;
        reject(new CoordinatorError(`only ${this.ready.length} of ${o.workers} worker(s) joined within ${Math.round(o.joinTimeoutMs / 1000)} s: check that they can reach the coordinator and hold the run's token`));
      }, o.joinTimeoutMs);
      const onStop = () => {
        clearTimeout(timer);
        this.joinWaiter = undefined;
        reject(new CoordinatorError('stopped as asked before the run started (no step was run)'));
      };
      if (o.stop?.aborted) return onStop();
      o.stop?.addEventListener('abort', onStop, { once: true });
      this.joinWaiter = () => {
        if (this.ready.filter((w) => !w.gone).length < o.workers) return;
        clearTimeout(timer);
        o.stop?.removeEventListener('abort', onStop);
        this.joinWaiter = undefined;
        resolve();
      };
      this.joinWaiter();
    });
  }

  private expectReports(step: number, workers: readonly WorkerSession[]): Promise<Map<number, StepReport>> {
    return new Promise((resolve, reject) => {
      const reports = new Map<number, StepReport>();
      const timer = setTimeout(() => {
        const missing = workers.filter((w) => !reports.has(w.id)).map((w) => `worker ${w.id} (${w.name})`);
        waiter.reject(new CoordinatorError(`${missing.join(', ')} did not report step ${step} within ${Math.round(this.o.stepTimeoutMs / 1000)} s`));
      }, this.o.stepTimeoutMs);
      const waiter: Waiter = {
        reports,
        resolve: () => {
          clearTimeout(timer);
          this.waiter = undefined;
          resolve(reports);
        },
        reject: (e) => {
          clearTimeout(timer);
          this.waiter = undefined;
          reject(e);
        },
      };
      this.waiter = waiter;
      this.expected = { step, workers };
      if (this.lost) waiter.reject(new CoordinatorError(`worker ${this.lost.id} (${this.lost.name}) is gone: ${this.lost.gone}`));
    });
  }

  /** A report of another generation or step is late or stray: fenced (refused, never counted). */
  private onReport(r: StepReport): string | undefined {
    const expected = this.expected;
    if (r.generation !== this.generation) return `report of step ${r.step} refused: it is of generation ${r.generation}, the run is at generation ${this.generation}`;
    if (!this.waiter || !expected || r.step !== expected.step) return `report of step ${r.step} refused: ${this.waiter && expected ? `step ${expected.step} is awaited` : 'no step is awaited (it was aborted)'}`;
    const worker = expected.workers.find((w) => w.id === r.workerId);
    if (!worker) return `report of step ${r.step} refused: worker ${r.workerId} is not a member of generation ${this.generation}`;
    if (!r.ok) {
      this.waiter.reject(new CoordinatorError(`worker ${worker.id} (${worker.name}) failed step ${r.step}: ${r.error}`));
      return undefined;
    }
    this.waiter.reports.set(r.workerId, r);
    if (this.waiter.reports.size === expected.workers.length) this.waiter.resolve();
    return undefined;
  }

  /** The next piece of the step in progress for a member; none when nothing is left. */
  private onClaim(r: ClaimRequest): ClaimReply | string {
    const pool = this.pool;
    const expected = this.waiter ? this.expected : undefined;
    if (r.generation !== this.generation) return `claim for step ${r.step} refused: it is of generation ${r.generation}, the run is at generation ${this.generation}`;
    if (!expected || expected.step !== r.step) return `claim for step ${r.step} refused: ${expected ? `step ${expected.step} is in progress` : 'no step is in progress (it was aborted)'}`;
    if (!expected.workers.some((w) => w.id === r.workerId)) return `claim for step ${r.step} refused: worker ${r.workerId} is not a member of generation ${this.generation}`;
    if (!pool || pool.step !== r.step || pool.generation !== r.generation) return { firstSample: 0, records: [] };
    // a retry of a claim whose reply was lost gets that reply again
    const last = pool.answered.get(r.workerId);
    if (last && last.sequence === r.sequence) return last.reply;
    const from = pool.next;
    const to = from + claimSize(pool.end - from, pool.ranks);
    pool.next = to;
    const reply = { firstSample: from, records: pool.records.slice(from, to).map((id, i) => ({ id, example: Buffer.from(pool.examples[from + i]!) })) };
    pool.answered.set(r.workerId, { sequence: r.sequence, reply });
    return reply;
  }

  private onGone(s: WorkerSession): void {
    this.o.observer?.onWorkerGone(s);
    this.balancer.forget(s.id);
    if (this.members.length === 0) {
      this.o.log(`worker ${s.id} (${s.name}) left before the run started: ${s.gone}`, { workerId: s.id, workerName: s.name }, 'warn');
      const i = this.ready.indexOf(s);
      if (i >= 0) this.ready.splice(i, 1);
      return;
    }
    if (!this.members.includes(s)) return;
    this.lost ??= s;
    this.waiter?.reject(new CoordinatorError(`worker ${s.id} (${s.name}) is gone: ${s.gone}`));
    if (this.state?.worker === s) this.state.reject(new CoordinatorError(`worker ${s.id} (${s.name}) is gone: ${s.gone}`));
  }

  private recordFailure(w: WorkerSession): void {
    this.failureCount++;
    this.failures.set(w.name, [...(this.failures.get(w.name) ?? []), Date.now()]);
  }

  private recentFailures(w: WorkerSession): number {
    const now = Date.now();
    return (this.failures.get(w.name) ?? []).filter((t) => now - t < FAILURE_MEMORY_MS).length;
  }

  private admissibleAt(w: WorkerSession, now: number): number {
    return admissibleAt(this.failures.get(w.name) ?? [], now, this.o.failureBackoffMs);
  }

  /**
   * Below --min-workers: waits until the live survivors and the joiners that may come in
   * (past their backoff) are at least `needed`, up to --rejoin-timeout or a stop. Returns the
   * survivors still alive; the joiners come in at the step boundary that follows.
   */
  private waitForMembers(survivors: readonly WorkerSession[], needed: number): Promise<{ alive: WorkerSession[]; enough: boolean }> {
    const deadline = Date.now() + this.o.rejoinTimeoutMs;
    return new Promise((resolve) => {
      const check = () => {
        this.checkHeartbeats();
        const now = Date.now();
        const alive = survivors.filter((w) => !w.gone);
        const admissible = this.joiners.filter((w) => !w.gone && this.admissibleAt(w, now) <= now).length;
        const enough = alive.length > 0 && alive.length + admissible >= needed;
        if (enough || alive.length === 0 || now >= deadline || this.o.stop?.aborted) {
          clearInterval(timer);
          resolve({ alive, enough });
        }
      };
      const timer = setInterval(check, 200);
      check();
    });
  }

  /**
   * After an abort: waits until every member has either shown life since (a heartbeat or a
   * report) or been given up on (gone, or silent past the heartbeat timeout), and returns
   * those alive. A stopped worker keeps its connection open; only its silence tells.
   */
  private settle(members: readonly WorkerSession[]): Promise<WorkerSession[]> {
    const since = Date.now();
    return new Promise((resolve) => {
      const check = () => {
        this.checkHeartbeats();
        const undecided = members.filter((w) => !w.gone && w.lastHeartbeat < since);
        if (undecided.length === 0) {
          clearInterval(timer);
          resolve(members.filter((w) => !w.gone));
        }
      };
      const timer = setInterval(check, 100);
      check();
    });
  }

  private checkHeartbeats(): void {
    const now = Date.now();
    for (const s of this.members.length === 0 ? this.ready : this.members) {
      if (!s.gone && now - s.lastHeartbeat > this.o.heartbeatTimeoutMs) {
        this.server!.markGone(s, `no heartbeat for ${Math.round((now - s.lastHeartbeat) / 1000)} s (stopped, hung or cut off)`);
      }
    }
  }

  private requestState(worker: WorkerSession): Promise<ReplicaState> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new CoordinatorError(`worker ${worker.id} (${worker.name}) did not send its state within ${Math.round(this.o.stepTimeoutMs / 1000)} s`)), this.o.stepTimeoutMs);
      const done = (e: Error | undefined, s?: ReplicaState) => {
        clearTimeout(timer);
        this.state = undefined;
        if (e) reject(e);
        else resolve(s!);
      };
      this.state = { worker, assembler: new StateAssembler(`worker ${worker.id} (${worker.name})`), resolve: (s) => done(undefined, s), reject: (e) => done(e) };
      if (worker.gone) return done(new CoordinatorError(`worker ${worker.id} (${worker.name}) is gone: ${worker.gone}`));
      this.send(worker, { kind: 'stateRequest', stateRequest: { generation: this.generation, step: this.step } });
    });
  }
}

/**
 * The settings that change the result of a run: the model, application, seed, optimizer,
 * global batch and clipping. Recompute, micro-batches and the number of workers do not, and
 * may change when a run is resumed.
 */
export function runSettings(o: Pick<CoordinatorOptions, 'spec' | 'globalBatch' | 'init'>): Record<string, JsonValue> {
  const init = o.init === undefined ? undefined : path.resolve(o.init);
  return JSON.parse(JSON.stringify({ model: o.spec.model, application: o.spec.application, seed: o.spec.seed, optimizer: o.spec.optimizer, clipNorm: o.spec.clipNorm, globalBatch: o.globalBatch, init })) as Record<string, JsonValue>;
}

/**
 * The replica state a run starts from with `--init`: the folder's weights, checked against
 * the run's model (names and shapes, the MLM head included), and a fresh optimizer state.
 */
export async function readInitialState(dir: string, spec: Pick<RunSpec, 'model' | 'optimizer' | 'application'>): Promise<ReplicaState & { notes: string[] }> {
  try {
    const folder = await openLayersModelFolder(dir);
    const imported = await importWeights(folder.source, 'ours', spec.model);
    const notes = [...imported.notes];
    if (folder.application !== spec.application) notes.push(`the model in ${dir} was trained as ${folder.application}, the run is ${spec.application}`);
    return { params: imported.weights, optimizer: createOptimizer(spec.optimizer).getState(), notes };
  } catch (e) {
    // the folder is the user's to fix (exit 2), not a failed run
    throw e instanceof ConvertError || e instanceof ConfigError ? new ConvertError(`--init ${dir}: ${e.message}`) : e;
  }
}

/** The same settings read from a checkpoint's config (`{spec, globalBatch}`). */
function settingsOfConfig(config: JsonValue): Record<string, unknown> {
  const saved = config as { spec?: Record<string, unknown>; globalBatch?: unknown } | null;
  return { ...saved?.spec, globalBatch: saved?.globalBatch };
}

const SETTING_FLAGS: Record<string, string> = {
  model: '--preset/--bert-config',
  application: '--application',
  seed: '--seed',
  optimizer: '--optimizer',
  clipNorm: '--clip-norm',
  globalBatch: '--global-batch',
  init: '--init',
};

/** A resumed run must be the same run: refused, naming each setting that differs and where the run's value was read. */
function checkSameRun(saved: Record<string, unknown>, source: string, o: CoordinatorOptions): void {
  const now = runSettings(o);
  const differ: string[] = [];
  for (const [key, flag] of Object.entries(SETTING_FLAGS)) {
    // a resume need not repeat --init: the run's own is used
    if (key === 'init' && now[key] === undefined) continue;
    if (JSON.stringify(saved[key]) !== JSON.stringify(now[key])) differ.push(`${flag} (the run has ${JSON.stringify(saved[key])}, now ${JSON.stringify(now[key])})`);
  }
  if (differ.length > 0) throw new CoordinatorError(`${o.runDir} holds a run with other settings (${source}): ${differ.join('; ')}. Resume with the run's settings, or start a new run in another directory`);
}

/**
 * Sums over the timed steps: along each step's critical rank (forwardBackward, copy, reduce,
 * apply), the other ranks' wait, the ranks' mean forward+backward (busy), their sum
 * (fbAllRanks) and the samples.
 */
interface Phases {
  forwardBackward: number;
  copy: number;
  reduce: number;
  wait: number;
  apply: number;
  busy: number;
  fbAllRanks: number;
  samples: number;
  steps: number;
}

function breakdownOf(seconds: number, p: Phases): StepBreakdown {
  const mean = (x: number) => (p.steps > 0 ? x / p.steps : 0);
  const known = p.forwardBackward + p.copy + p.reduce + p.apply;
  return {
    stepSeconds: mean(seconds),
    forwardBackwardSeconds: mean(p.forwardBackward),
    copySeconds: mean(p.copy),
    reduceSeconds: mean(p.reduce),
    waitSeconds: mean(p.wait),
    applySeconds: mean(p.apply),
    otherSeconds: mean(Math.max(0, seconds - known)),
    busyShare: seconds > 0 ? p.busy / seconds : 0,
    forwardBackwardPerSampleSeconds: p.samples > 0 ? p.fbAllRanks / p.samples : 0,
  };
}

/** Undefined when every member reported the same parameter digest; else who holds what. */
export function replicaDivergence(members: readonly { id: number; name: string }[], reports: ReadonlyMap<number, { paramDigest: string }>): string | undefined {
  const digests = members.map((m) => ({ m, digest: reports.get(m.id)?.paramDigest ?? '' }));
  if (digests.every((d) => d.digest !== '' && d.digest === digests[0]!.digest)) return undefined;
  return digests.map(({ m, digest }) => `worker ${m.id} (${m.name}) ${digest ? digest.slice(0, 12) : 'sent none'}`).join(', ');
}

/**
 * The commits of the journal with a step above `fromStep` that still count, in step order:
 * a `resume` entry voids the commits before it above its `fromStep`.
 */
export function commitsAfter(entries: readonly JournalEntry[], fromStep: number): CommittedStep[] {
  let valid: CommittedStep[] = [];
  for (const e of entries) {
    if (e.type === 'commit') valid.push({ step: e.step, epoch: e.epoch, positions: e.positions });
    else if (e.type === 'resume') valid = valid.filter((c) => c.step <= e.fromStep);
  }
  return valid.filter((c) => c.step > fromStep).sort((a, b) => a.step - b.step);
}
