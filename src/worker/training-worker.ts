/**
 * A worker: one model replica in one process. It joins the coordinator, serves its ring
 * neighbours' pulls, and carries out the coordinator's instructions in the order they
 * arrive: take an assignment (rank, ring, generation; the run on the first one), restore
 * state, reduce a step's gradients with its peers and report, apply a committed step,
 * drop an aborted one, upload its state, stop.
 */
import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import * as grpc from '@grpc/grpc-js';
import { Worker } from 'node:worker_threads';
import type * as tfl from '@tensorflow/tfjs-layers';
import { type BackendChoice, selectBackend } from '../backend/index.js';
import { modelKernelsFused } from '../backend/wasm/simd-module.js';
import { Communicator } from '../comm/communicator.js';
import type { JoinToken, TlsMaterial } from '../comm/auth.js';
import { CommServer } from '../comm/server.js';
import { ControlClient, ControlError } from '../control/client.js';
import type { Assignment, ClaimReply, ClaimRequest, Instruction, StateChunk, StepReport, WireRecord, Work } from '../control/messages.js';
import { parseRunSpec, type RunSpec } from '../control/run-spec.js';
import { type ReplicaState, StateAssembler, stateChunks } from '../control/state-transfer.js';
import { batchFromRecords, decodeRecord } from '../data/dataset.js';
import { buildTransformer, disposeTransformer } from '../model/build.js';
import { createOptimizer, type Optimizer, VariableParameters } from '../optim/index.js';
import { PretrainingObjective } from '../train/step.js';
import { type ReducedStep, type StepPiece, stepDropoutSeed, Trainer } from '../train/trainer.js';
import type { WorkerMetrics } from '../metrics/metrics.js';
import type { HeartbeatThreadData } from './heartbeat-thread.js';
import type { LogFields, LogFn } from '../log/logger.js';

export interface WorkerOptions {
  /** host:port of the coordinator's control server. */
  readonly coordinator: string;
  readonly token: JoinToken;
  readonly tls?: TlsMaterial | undefined;
  /** What peers dial to reach this worker's data plane, and where it listens unless `bind` says otherwise (default 127.0.0.1). */
  readonly host?: string;
  /** Where the data-plane server listens (default `host`; 0.0.0.0 in a pod, whose `host` is its DNS name). */
  readonly bind?: string;
  /** The data plane's port (default 0: any free port). */
  readonly port?: number;
  /** Told whether the worker is in a run: joined, with its instruction stream open (Kubernetes readiness). */
  readonly onJoined?: (joined: boolean) => void;
  readonly backend: BackendChoice;
  readonly name?: string;
  /** A log line (its text, and for the JSON log its fields and level; see src/log/logger.ts). */
  readonly log: LogFn;
  readonly heartbeatMs?: number;
  /** How long to keep joining again when the coordinator goes away mid-run (0: give up at once). Default 60 s. */
  readonly reconnectMs?: number;
  /** This worker's Prometheus series (src/metrics), when its metrics are served. */
  readonly metrics?: WorkerMetrics;
}

/** The coordinator went away without saying stop: it may come back. */
class CoordinatorGone extends ControlError {}

interface Replica {
  readonly spec: RunSpec;
  readonly model: tfl.LayersModel;
  readonly objective: PretrainingObjective;
  readonly optimizer: Optimizer;
  readonly params: VariableParameters;
}

export class TrainingWorker {
  private control: ControlClient | undefined;
  private server: CommServer | undefined;
  private communicator: Communicator | undefined;
  private replica: Replica | undefined;
  private trainer: Trainer | undefined;
  private workerId = 0;
  private generation = 0;
  private step = 0;
  /** Reported with the next step: the update happens after the report of its own step. */
  private lastApplySeconds = 0;
  private runId = '';
  private rank: number | undefined;
  private readonly pending = new Map<number, ReducedStep>();
  private restoring: { step: number; assembler: StateAssembler } | undefined;
  private queue: Promise<void> = Promise.resolve();
  private heartbeat: Worker | undefined;

  constructor(private readonly options: WorkerOptions) {}

  /** Where the worker stands, for every log line: its run, id (the coordinator's), generation, rank and last applied step, once known. */
  get logContext(): LogFields {
    return { runId: this.runId || undefined, workerId: this.workerId || undefined, generation: this.generation, rank: this.rank, step: this.step };
  }

  /** Runs until the coordinator says stop (resolves with its reason) or the control stream fails (rejects). */
  async run(): Promise<string> {
    const o = this.options;
    const backend = await selectBackend(o.backend);
    o.metrics?.backend(backend.name);
    const control = new ControlClient(o.coordinator, o.token, o.tls);
    this.control = control;
    const name = o.name ?? `${hostname()}:${process.pid}`;
    let runId = '';
    let waitMs = 30_000;
    try {
      for (;;) {
        const joined = await control.join({ name, backend: backend.name, freeMemoryBytes: 0, runId, heldStep: this.step, generation: this.generation }, waitMs);
        if (runId && joined.runId !== runId) throw new ControlError(`the coordinator at ${o.coordinator} now runs ${joined.runId}, not ${runId}: this worker's replica is of another run`);
        runId = joined.runId;
        this.runId = runId;
        this.workerId = joined.workerId;
        if (!this.server) {
          const bind = o.bind ?? o.host ?? '127.0.0.1';
          this.server = await CommServer.listen({ runId, token: o.token, tls: o.tls, host: bind, port: o.port, advertiseHost: o.host }).catch((e: NodeJS.ErrnoException) => {
            throw new Error(`cannot serve the data plane on ${bind}:${o.port ?? 0} (${e.code ?? e.message}): is ${o.bind !== undefined ? '--bind' : '--host'} an address of this machine${o.port ? ' and --port free' : ''}?`);
          });
          const heartbeatData: HeartbeatThreadData = { coordinator: o.coordinator, authorization: o.token.header(), tls: o.tls, workerId: this.workerId, intervalMs: o.heartbeatMs ?? 1000 };
          this.heartbeat = new Worker(new URL('./heartbeat-thread.js', import.meta.url), { workerData: heartbeatData });
          this.heartbeat.unref();
        }
        this.heartbeat?.postMessage({ workerId: this.workerId, generation: this.generation, step: this.step });
        const fused = backend.name === 'wasm' && modelKernelsFused();
        o.log(`worker ${this.workerId}: joined run ${runId} at ${o.coordinator} (pid ${process.pid}, backend ${backend.name}${fused ? ' with fused multiply-adds' : ''}, data plane ${this.server.address}${this.replica ? `, holding step ${this.step}` : ''})`, {
          coordinator: o.coordinator,
          backend: backend.name,
          fusedMultiplyAdd: backend.name === 'wasm' ? fused : undefined,
          dataPlane: this.server.address,
          heldStep: this.replica ? this.step : undefined,
        });
        try {
          o.onJoined?.(true);
          return await this.listen(control);
        } catch (e) {
          o.onJoined?.(false);
          // a coordinator that went away may come back (restarted by hand or by Kubernetes) and
          // resume from this replica: keep it and join again, for --reconnect-timeout
          if (!(e instanceof CoordinatorGone) || !this.replica || (o.reconnectMs ?? 60_000) <= 0) throw e;
          o.log(`worker ${this.workerId}: ${e.message}; joining again for up to ${Math.round((o.reconnectMs ?? 60_000) / 1000)} s, holding step ${this.step}`, { reconnectSeconds: Math.round((o.reconnectMs ?? 60_000) / 1000) }, 'warn');
          this.rank = undefined;
          o.metrics?.reconnected();
          this.communicator?.close();
          this.communicator = undefined;
          this.pending.clear();
          this.restoring = undefined;
          this.queue = Promise.resolve();
          waitMs = o.reconnectMs ?? 60_000;
        }
      }
    } finally {
      o.onJoined?.(false);
      this.heartbeat?.postMessage('stop');
      this.communicator?.close();
      await this.server?.close();
      control.close();
      if (this.replica) disposeTransformer(this.replica.model);
    }
  }

  private listen(control: ControlClient): Promise<string> {
    return new Promise((resolve, reject) => {
      const stream = control.instructions(this.workerId, this.server!.address);
      let stopped: string | undefined;
      stream.on('data', (instruction: Instruction) => {
        // an abort must not wait behind the step it aborts: a collective stuck on a lost peer
        // ends now, instead of at its deadline
        if (instruction.kind === 'abort' && instruction.abort.generation === this.generation) this.communicator?.close();
        // one at a time, in order: a commit must follow its step, work must follow a restore
        this.queue = this.queue
          .then(() => this.handle(instruction))
          .then((stop) => {
            if (stop !== undefined) {
              stopped = stop;
              stream.cancel();
            }
          })
          .catch((e: unknown) => {
            stream.cancel();
            reject(e);
          });
      });
      stream.on('error', (e: Error & { code?: number }) => {
        if (stopped === undefined) reject(new CoordinatorGone(`the coordinator's instruction stream failed (${e.message}): the coordinator stopped or the connection broke`));
      });
      stream.on('end', () => {
        void this.queue.then(() => (stopped !== undefined ? resolve(stopped) : reject(new CoordinatorGone('the coordinator ended the instruction stream without saying stop: it stopped or restarted'))));
      });
      stream.on('close', () => {
        void this.queue.then(() => {
          if (stopped !== undefined) resolve(stopped);
        });
      });
    });
  }

  /** Returns the stop reason on a stop instruction. */
  private async handle(instruction: Instruction): Promise<string | undefined> {
    switch (instruction.kind) {
      case 'assign':
        this.assign(instruction.assign);
        return undefined;
      case 'state':
        this.restore(instruction.state);
        return undefined;
      case 'work':
        await this.work(instruction.work);
        return undefined;
      case 'commit': {
        const reduced = this.pending.get(instruction.commit.step);
        if (!reduced || instruction.commit.generation !== this.generation) throw new Error(`commit of step ${instruction.commit.step} (generation ${instruction.commit.generation}), which this worker has not reduced`);
        this.pending.delete(instruction.commit.step);
        const applyStart = performance.now();
        reduced.apply();
        this.lastApplySeconds = (performance.now() - applyStart) / 1000;
        this.step = instruction.commit.step;
        this.heartbeat?.postMessage({ generation: this.generation, step: this.step });
        return undefined;
      }
      case 'abort':
        this.pending.delete(instruction.abort.step);
        return undefined;
      case 'stateRequest':
        await this.uploadState(instruction.stateRequest.generation, instruction.stateRequest.step);
        return undefined;
      case 'stop':
        return instruction.stop.reason || 'stopped by the coordinator';
      default:
        throw new Error(`unknown instruction ${JSON.stringify((instruction as { kind?: unknown }).kind)}`);
    }
  }

  private assign(a: Assignment): void {
    if (a.generation <= this.generation) throw new Error(`assignment of generation ${a.generation}, not newer than ${this.generation}`);
    if (!this.replica) this.replica = this.buildReplica(parseRunSpec(a.runJson));
    const spec = this.replica.spec;
    this.communicator?.close();
    this.pending.clear();
    this.generation = a.generation;
    this.rank = a.rank;
    this.communicator = new Communicator(this.server!, { generation: a.generation, rank: a.rank, peers: a.peers, deadlineMs: spec.collectiveDeadlineMs });
    const { objective, optimizer, params } = this.replica;
    this.trainer = new Trainer({ objective, optimizer, params, clipNorm: spec.clipNorm, recompute: spec.recompute, reducer: this.communicator, compression: spec.allreduceCompression, shardUpdate: spec.shardOptimizer });
    if (a.restoreStep > 0 || a.stateFollows) this.restoring = { step: a.restoreStep, assembler: new StateAssembler(`the coordinator (step ${a.restoreStep})`) };
    this.options.metrics?.assigned(a.rank, a.peers.length, a.generation);
    this.options.log(`worker ${this.workerId}: generation ${a.generation}, rank ${a.rank} of ${a.peers.length}${this.trainer.shardsUpdate ? ', optimizer update sharded' : ''}${a.restoreStep > 0 ? `, restoring step ${a.restoreStep}` : a.stateFollows ? ', receiving the initial weights' : ''}`, {
      worldSize: a.peers.length,
      shardedUpdate: this.trainer.shardsUpdate,
      restoreStep: a.restoreStep > 0 ? a.restoreStep : undefined,
    });
  }

  private buildReplica(spec: RunSpec): Replica {
    // the same seed on every worker: identical initial replicas without a transfer
    const model = buildTransformer(spec.model, { application: spec.application, withMlm: true, seed: spec.seed });
    const objective = new PretrainingObjective(model);
    return { spec, model, objective, optimizer: createOptimizer(spec.optimizer), params: new VariableParameters(objective.weights) };
  }

  private restore(chunk: StateChunk): void {
    if (!this.restoring || !this.replica) throw new Error(`state chunk ${chunk.name} without a restoring assignment`);
    this.restoring.assembler.add(chunk);
    if (!this.restoring.assembler.complete) return;
    applyReplicaState(this.replica, this.restoring.assembler.state());
    this.step = this.restoring.step;
    this.restoring = undefined;
  }

  private async work(w: Work): Promise<void> {
    const replica = this.replica;
    if (!replica || !this.trainer || w.generation !== this.generation) throw new Error(`work for step ${w.step} of generation ${w.generation} before its assignment`);
    if (this.restoring) throw new Error(`work for step ${w.step} before the state of step ${this.restoring.step} arrived`);
    const { spec } = replica;
    const started = performance.now();
    const report: StepReport = {
      workerId: this.workerId, generation: w.generation, step: w.step, ok: false, error: '', loss: 0, accuracy: 0, targets: 0, gradNorm: 0, computeSeconds: 0, reduceSeconds: 0, tokens: 0, paramDigest: '', learningRate: 0,
      forwardBackwardSeconds: 0, copySeconds: 0, applySeconds: this.lastApplySeconds, samples: 0, positions: 0,
    };
    try {
      if (w.digest) report.paramDigest = parameterDigest(replica.objective);
      let samples = 0;
      let positions = 0;
      let tokens = 0;
      // each piece is padded to its own longest record (the shortest records of a step come
      // last, so the last pieces are short); dropout counts positions over the step's longest
      // (maskLength), so every sample draws the mask it would in one batch of the whole step
      const piece = (wire: readonly WireRecord[], firstSample: number): StepPiece => {
        const records = wire.map((r) => ({ id: r.id, record: decodeRecord(r.example, spec.manifest, spec.perTokenFeature, `record ${r.id}`) }));
        samples += records.length;
        tokens += records.reduce((sum, r) => sum + r.record.tokenIds.length, 0);
        const microBatches = spec.microBatch > 0 ? Math.max(1, Math.ceil(records.length / spec.microBatch)) : 1;
        const batch = batchFromRecords(spec.manifest, records, spec.application, spec.seed, w.epoch);
        positions += batch.batchSize * batch.length;
        return { batch, firstSample, microBatches };
      };
      const first = piece(w.records, w.firstSample);
      const control = this.control!;
      let sequence = 0;
      const more = w.claim
        ? async (): Promise<StepPiece | undefined> => {
            const claimed = await claimWithRetries(control, { workerId: this.workerId, generation: w.generation, step: w.step, sequence: ++sequence });
            return claimed.records.length > 0 ? piece(claimed.records, claimed.firstSample) : undefined;
          }
        : undefined;
      const [sent, received] = [this.communicator?.bytesSent ?? 0, this.communicator?.bytesReceived ?? 0];
      const reduced = await this.trainer.reduce(first.batch, { step: w.step, dropoutSeed: stepDropoutSeed(spec.seed, w.step), firstSample: w.firstSample, microBatches: first.microBatches, maskLength: w.length }, more);
      this.pending.set(w.step, reduced);
      Object.assign(report, { ok: true, loss: reduced.loss, accuracy: reduced.accuracy, targets: reduced.targets, gradNorm: reduced.gradNorm, tokens, samples, positions, reduceSeconds: reduced.reduceSeconds, applySeconds: this.lastApplySeconds + reduced.updateSeconds, learningRate: replica.optimizer.currentLearningRate, forwardBackwardSeconds: reduced.computeSeconds, copySeconds: reduced.copySeconds });
      this.options.metrics?.stepReduced({
        computeSeconds: reduced.computeSeconds,
        copySeconds: reduced.copySeconds,
        reduceSeconds: reduced.reduceSeconds,
        bytesSent: (this.communicator?.bytesSent ?? 0) - sent,
        bytesReceived: (this.communicator?.bytesReceived ?? 0) - received,
        samples,
        tokens,
      });
    } catch (e) {
      report.error = (e as Error).message;
      this.options.metrics?.stepFailed();
    }
    report.computeSeconds = (performance.now() - started) / 1000;
    const fenced = await this.control!.report(report);
    if (fenced !== undefined) this.options.log(`worker ${this.workerId}: ${fenced}`, { reportStep: w.step }, 'warn');
  }

  private async uploadState(generation: number, step: number): Promise<void> {
    if (!this.replica) throw new Error('state requested before the run was assigned');
    if (step !== this.step) throw new Error(`state of step ${step} requested, this worker holds step ${this.step}`);
    await this.control!.putState(stateChunks(captureReplicaState(this.replica), { workerId: this.workerId, generation, step }));
  }
}

/**
 * A claim, sent again (same sequence: the same records) when its call failed on the way, up
 * to three times: a lost reply must not fail the step. A refusal (the step is no longer in
 * progress, a stale generation) is final.
 */
async function claimWithRetries(control: ControlClient, request: ClaimRequest): Promise<ClaimReply> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await control.claim(request);
    } catch (e) {
      const code = (e as { code?: number }).code;
      const final = code === grpc.status.FAILED_PRECONDITION || code === grpc.status.UNAUTHENTICATED || code === grpc.status.NOT_FOUND;
      if (final || attempt >= 3) throw e;
      await new Promise((resolve) => setTimeout(resolve, 200 * attempt));
    }
  }
}

/** SHA-256 of every trainable weight's bytes, in the model's order: equal digests, identical replicas. */
export function parameterDigest(objective: PretrainingObjective): string {
  const hash = createHash('sha256');
  for (const w of objective.weights) {
    const values = w.variable.dataSync() as Float32Array;
    hash.update(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  }
  return hash.digest('hex');
}

export function captureReplicaState(replica: { objective: PretrainingObjective; optimizer: Optimizer }): ReplicaState {
  return {
    params: replica.objective.weights.map((w) => ({ name: w.name, shape: [...w.shape], data: new Float32Array(w.variable.dataSync() as Float32Array) })),
    optimizer: replica.optimizer.getState(),
  };
}

export function applyReplicaState(replica: { objective: PretrainingObjective; optimizer: Optimizer; params: VariableParameters }, state: ReplicaState): void {
  const byName = new Map(state.params.map((p) => [p.name, p]));
  replica.objective.weights.forEach((w, i) => {
    const p = byName.get(w.name);
    if (!p) throw new Error(`the state has no weight ${w.name}`);
    if (p.data.length !== w.variable.size) throw new Error(`the state's ${w.name} has ${p.data.length} values, the model's ${w.variable.size}`);
    replica.params.write(i, p.data);
  });
  if (byName.size !== replica.objective.weights.length) throw new Error(`the state has ${byName.size} weights, the model ${replica.objective.weights.length}`);
  replica.optimizer.setState(state.optimizer);
}
