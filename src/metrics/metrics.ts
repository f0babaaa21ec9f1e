/**
 * Prometheus metrics (prom-client) of the coordinator and of the workers, each process on its
 * own HTTP port (`/metrics`). The coordinator owns the run-level series (committed steps,
 * world size, checkpoints, the ledger); a worker owns its own (compute, device-to-host copies,
 * all-reduce time and bytes, what it processed), labelled with its `rank` and `host`.
 *
 * Names follow Prometheus practice: one prefix (`pretrain_`), base units (`_seconds`,
 * `_bytes`), counters ending in `_total`. Labels are bounded: never a step or record id; the
 * ledger keeps the current and the previous epoch only; a worker whose rank changes drops
 * the series of its old rank. README.md ("Metrics") lists every series.
 */
import { createServer, type Server } from 'node:http';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import type { AddressInfo } from 'node:net';
import { InvalidArgumentError } from 'commander';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { logText } from '../log/logger.js';

export const METRICS_PREFIX = 'pretrain_';

/** Buckets for step, compute and all-reduce times: from a tiny model on a CPU to a large one. */
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300];
/** Checkpoints write from kilobytes to gigabytes. */
const CHECKPOINT_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

function packageVersion(): string {
  for (const url of [new URL('../../../package.json', import.meta.url), new URL('../../package.json', import.meta.url)]) {
    try {
      return (JSON.parse(readFileSync(url, 'utf8')) as { version?: string }).version ?? 'unknown';
    } catch {
      // not this layout (dist/src/metrics or src/metrics)
    }
  }
  return 'unknown';
}

/** A registry with prom-client's process metrics and `pretrain_build_info`; returns the registry and a setter of the backend label. */
function baseRegistry(backend: string): { registry: Registry; setBackend(name: string): void } {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const info = new Gauge({ name: `${METRICS_PREFIX}build_info`, help: 'Always 1: the version of tfjs-pretrain, of Node.js and the tfjs backend of this process (none: the coordinator)', labelNames: ['version', 'node', 'backend'], registers: [registry] });
  const setBackend = (name: string) => {
    info.reset();
    info.set({ version: packageVersion(), node: process.version, backend: name }, 1);
  };
  setBackend(backend);
  return { registry, setBackend };
}

/** --metrics-port: 0-65535 (0: any free port). */
export function metricsPort(value: string): number {
  const n = Number(value);
  if (!/^\s*\d+\s*$/.test(value) || n > 65535) throw new InvalidArgumentError(`expected a port 0-65535 (0: any free port), got "${value}".`);
  return n;
}

export interface CommittedStepMetrics {
  /** Wall seconds from handing out the records to the commit. */
  readonly seconds: number;
  readonly samples: number;
  /** Real tokens (no padding) of the global batch. */
  readonly tokens: number;
  readonly loss: number;
  readonly learningRate: number;
  readonly gradNorm: number;
  readonly step: number;
  /** The ledger after the commit: its current epoch, records consumed in it, records per epoch. */
  readonly epoch: number;
  readonly consumedInEpoch: number;
  readonly epochSize: number;
}

/** The run-level series, owned by the coordinator. */
export class CoordinatorMetrics {
  readonly registry = baseRegistry('none').registry;
  private readonly r = [this.registry];
  private readonly stepDuration = new Histogram({ name: `${METRICS_PREFIX}step_duration_seconds`, help: 'Wall time of a committed step, from handing out its records to the commit', buckets: DURATION_BUCKETS, registers: this.r });
  private readonly samples = new Counter({ name: `${METRICS_PREFIX}samples_total`, help: 'Samples (sequences) of committed steps', registers: this.r });
  private readonly tokens = new Counter({ name: `${METRICS_PREFIX}tokens_total`, help: 'Real tokens (no padding) of committed steps', registers: this.r });
  private readonly loss = new Gauge({ name: `${METRICS_PREFIX}loss`, help: 'Training loss of the global batch of the last committed step', registers: this.r });
  private readonly learningRate = new Gauge({ name: `${METRICS_PREFIX}learning_rate`, help: 'Learning rate the last committed step applied', registers: this.r });
  private readonly gradNorm = new Gauge({ name: `${METRICS_PREFIX}gradient_norm`, help: 'Global gradient norm (before clipping) of the last committed step', registers: this.r });
  private readonly lastStep = new Gauge({ name: `${METRICS_PREFIX}committed_step`, help: 'The last committed step', registers: this.r });
  private readonly worldSize = new Gauge({ name: `${METRICS_PREFIX}world_size`, help: 'Workers in the current generation', registers: this.r });
  private readonly generationGauge = new Gauge({ name: `${METRICS_PREFIX}generation`, help: 'The current generation (membership epoch); only grows, across restarts too', registers: this.r });
  private readonly membershipChanges = new Counter({ name: `${METRICS_PREFIX}membership_changes_total`, help: 'New generations after the first: workers lost (shrink) or joined (grow)', labelNames: ['change'], registers: this.r });
  private readonly restartsCounter = new Counter({ name: `${METRICS_PREFIX}restarts_total`, help: 'Times this run was resumed by a (re)started coordinator, from its journal', registers: this.r });
  private readonly aborted = new Counter({ name: `${METRICS_PREFIX}aborted_steps_total`, help: 'Steps aborted (a worker lost, late or failing); their records went back to the ledger', registers: this.r });
  private readonly checkpointDuration = new Histogram({ name: `${METRICS_PREFIX}checkpoint_duration_seconds`, help: 'Time to take a replica\'s state and write a checkpoint', buckets: CHECKPOINT_BUCKETS, registers: this.r });
  private readonly checkpointSize = new Gauge({ name: `${METRICS_PREFIX}checkpoint_size_bytes`, help: 'Size of the last checkpoint', registers: this.r });
  private readonly checkpointTime = new Gauge({ name: `${METRICS_PREFIX}checkpoint_last_timestamp_seconds`, help: 'Unix time of the last complete checkpoint', registers: this.r });
  private readonly checkpointStep = new Gauge({ name: `${METRICS_PREFIX}checkpoint_last_step`, help: 'Step of the last complete checkpoint', registers: this.r });
  private readonly epochGauge = new Gauge({ name: `${METRICS_PREFIX}epoch`, help: 'The ledger\'s current epoch (0-based)', registers: this.r });
  private readonly epochRecords = new Gauge({ name: `${METRICS_PREFIX}epoch_records`, help: 'Records per epoch', registers: this.r });
  private readonly epochConsumed = new Gauge({ name: `${METRICS_PREFIX}epoch_records_consumed`, help: 'Records of an epoch consumed by committed steps (the current and the previous epoch only)', labelNames: ['epoch'], registers: this.r });
  private readonly epochsShown: number[] = [];
  private lastWorldSize = 0;

  constructor() {
    // labelled counters exist from 0, so that increase() sees their first change
    for (const change of ['shrink', 'grow']) this.membershipChanges.inc({ change }, 0);
  }

  stepCommitted(m: CommittedStepMetrics): void {
    this.stepDuration.observe(m.seconds);
    this.samples.inc(m.samples);
    this.tokens.inc(m.tokens);
    this.loss.set(m.loss);
    this.learningRate.set(m.learningRate);
    this.gradNorm.set(m.gradNorm);
    this.lastStep.set(m.step);
    this.ledger(m.epoch, m.consumedInEpoch, m.epochSize);
  }

  /** The ledger's progress; an epoch just completed stays shown as full until the next one completes. */
  ledger(epoch: number, consumed: number, epochSize: number): void {
    this.epochGauge.set(epoch);
    this.epochRecords.set(epochSize);
    if (!this.epochsShown.includes(epoch)) {
      for (const e of this.epochsShown) if (e < epoch) this.epochConsumed.set({ epoch: String(e) }, epochSize);
      this.epochsShown.push(epoch);
      while (this.epochsShown.length > 2) this.epochConsumed.remove({ epoch: String(this.epochsShown.shift()!) });
    }
    this.epochConsumed.set({ epoch: String(epoch) }, consumed);
  }

  /** A new generation of `size` workers; a change of size after the first counts as a membership change. */
  generation(generation: number, size: number): void {
    if (this.lastWorldSize > 0 && size !== this.lastWorldSize) this.membershipChanges.inc({ change: size < this.lastWorldSize ? 'shrink' : 'grow' });
    this.lastWorldSize = size;
    this.generationGauge.set(generation);
    this.worldSize.set(size);
  }

  stepAborted(): void {
    this.aborted.inc();
  }

  /** How often the run was resumed in all (from the journal), counting this process's resume. */
  restarts(total: number): void {
    this.restartsCounter.reset();
    if (total > 0) this.restartsCounter.inc(total);
  }

  checkpointSaved(step: number, seconds: number, bytes: number): void {
    this.checkpointDuration.observe(seconds);
    this.checkpointSize.set(bytes);
    this.checkpointTime.set(Date.now() / 1000);
    this.checkpointStep.set(step);
  }
}

export interface WorkerStepMetrics {
  /** Seconds of forward and backward (the objective's compute, without the copies). */
  readonly computeSeconds: number;
  /** Seconds copying the gradients out of tfjs into host buffers. */
  readonly copySeconds: number;
  readonly reduceSeconds: number;
  readonly bytesSent: number;
  readonly bytesReceived: number;
  readonly samples: number;
  readonly tokens: number;
}

/** A worker's own series, labelled with its rank (of the current generation) and host. */
export class WorkerMetrics {
  readonly registry: Registry;
  /** Sets build_info's backend label: the backend the worker selected (until then, the one asked for). */
  readonly backend: (name: string) => void;
  private readonly host: string;
  private labels: { rank: string; host: string } | undefined;
  private readonly compute: Histogram<'rank' | 'host'>;
  private readonly copy: Histogram<'rank' | 'host'>;
  private readonly reduce: Histogram<'rank' | 'host'>;
  private readonly bytes: Counter<'rank' | 'host' | 'direction'>;
  private readonly samples: Counter<'rank' | 'host'>;
  private readonly tokens: Counter<'rank' | 'host'>;
  private readonly failed: Counter<'rank' | 'host'>;
  private readonly reconnectsCounter: Counter<'host'>;
  private readonly generationGauge: Gauge<'rank' | 'host'>;
  private readonly worldSize: Gauge<'rank' | 'host'>;

  constructor(backend: string, host = hostname()) {
    ({ registry: this.registry, setBackend: this.backend } = baseRegistry(backend));
    this.host = host;
    const registers = [this.registry];
    const labelNames = ['rank', 'host'] as const;
    this.compute = new Histogram({ name: `${METRICS_PREFIX}worker_compute_duration_seconds`, help: 'Forward and backward of this worker\'s share of a step (without copies and all-reduce)', labelNames, buckets: DURATION_BUCKETS, registers });
    this.copy = new Histogram({ name: `${METRICS_PREFIX}device_to_host_copy_duration_seconds`, help: 'Copying a step\'s gradients out of tfjs (device) into host buffers for the all-reduce', labelNames, buckets: DURATION_BUCKETS, registers });
    this.reduce = new Histogram({ name: `${METRICS_PREFIX}allreduce_duration_seconds`, help: 'Ring all-reduce of a step\'s gradients (and loss statistics)', labelNames, buckets: DURATION_BUCKETS, registers });
    this.bytes = new Counter({ name: `${METRICS_PREFIX}allreduce_bytes_total`, help: 'Payload bytes this rank sent to (direction=sent) or received from (received) its ring neighbours in all-reduces', labelNames: [...labelNames, 'direction'], registers });
    this.samples = new Counter({ name: `${METRICS_PREFIX}worker_samples_total`, help: 'Samples this worker computed gradients for (steps later aborted included)', labelNames, registers });
    this.tokens = new Counter({ name: `${METRICS_PREFIX}worker_tokens_total`, help: 'Real tokens (no padding) this worker computed gradients for (steps later aborted included)', labelNames, registers });
    this.failed = new Counter({ name: `${METRICS_PREFIX}worker_failed_steps_total`, help: 'Steps this worker could not reduce (a peer lost, a deadline, an aborted collective)', labelNames, registers });
    this.reconnectsCounter = new Counter({ name: `${METRICS_PREFIX}worker_reconnects_total`, help: 'Times this worker lost its coordinator mid-run and joined again, keeping its replica', labelNames: ['host'], registers });
    this.generationGauge = new Gauge({ name: `${METRICS_PREFIX}worker_generation`, help: 'The generation this worker serves', labelNames, registers });
    this.worldSize = new Gauge({ name: `${METRICS_PREFIX}worker_world_size`, help: 'Ranks in the ring of this worker\'s generation', labelNames, registers });
    this.reconnectsCounter.inc({ host }, 0);
  }

  /** A new assignment. A rank other than the last one's drops the old rank's series (bounded labels; counters restart, as rate() expects). */
  assigned(rank: number, size: number, generation: number): void {
    const labels = { rank: String(rank), host: this.host };
    if (this.labels && this.labels.rank !== labels.rank) {
      for (const m of [this.compute, this.copy, this.reduce, this.samples, this.tokens, this.failed, this.generationGauge, this.worldSize]) m.remove(this.labels);
      for (const direction of ['sent', 'received']) this.bytes.remove({ ...this.labels, direction });
    }
    this.labels = labels;
    this.failed.inc(labels, 0);
    this.generationGauge.set(labels, generation);
    this.worldSize.set(labels, size);
  }

  stepReduced(m: WorkerStepMetrics): void {
    const labels = this.labels;
    if (!labels) return;
    this.compute.observe(labels, m.computeSeconds);
    this.copy.observe(labels, m.copySeconds);
    this.reduce.observe(labels, m.reduceSeconds);
    this.bytes.inc({ ...labels, direction: 'sent' }, m.bytesSent);
    this.bytes.inc({ ...labels, direction: 'received' }, m.bytesReceived);
    this.samples.inc(labels, m.samples);
    this.tokens.inc(labels, m.tokens);
  }

  stepFailed(): void {
    if (this.labels) this.failed.inc(this.labels);
  }

  reconnected(): void {
    this.reconnectsCounter.inc({ host: this.host });
  }
}

export interface MetricsEndpoint {
  /** host:port it listens on. */
  readonly address: string;
  close(): Promise<void>;
}

/** Serves `GET /metrics` of the registry on host:port (port 0: a free one). */
export function serveMetrics(registry: Registry, host: string, port: number): Promise<MetricsEndpoint> {
  const server: Server = createServer((req, res) => {
    const url = (req.url ?? '').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (url !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: the metrics are at /metrics\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(req.method === 'HEAD' ? undefined : text),
      (e: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${e.message}\n`),
    );
  });
  // a scraper's keep-alive connection must not hold the process open at exit
  server.keepAliveTimeout = 5_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      server.unref();
      const a = server.address() as AddressInfo;
      const shown = a.family === 'IPv6' ? `[${a.address}]` : a.address;
      resolve({
        address: `${shown}:${a.port}`,
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done());
            server.closeAllConnections();
          }),
      });
    });
  });
}

/**
 * Serves the registry and announces where (by default a line on stderr; `announce` gets the
 * line and the URL instead, for a JSON log); a port that cannot be had is a clear error.
 */
export async function startMetricsEndpoint(registry: Registry, role: 'coordinator' | 'worker', host: string, port: number, announce?: (line: string, url: string) => void): Promise<MetricsEndpoint> {
  const endpoint = await serveMetrics(registry, host, port).catch((e: NodeJS.ErrnoException) => {
    throw new MetricsError(`cannot serve metrics on ${host}:${port} (${e.code ?? e.message}): choose another --metrics-port (0: any free port) or --metrics-host`);
  });
  const line = metricsAnnouncement(role, endpoint.address);
  if (announce) announce(line, `http://${endpoint.address}/metrics`);
  else process.stderr.write(`${line}\n`);
  return endpoint;
}

export class MetricsError extends Error {
  override name = 'MetricsError';
}

/** The line a process prints on stderr once its metrics listen; the coordinator reads its local workers' from their output. */
export function metricsAnnouncement(role: 'coordinator' | 'worker', address: string): string {
  return `${role}: metrics on http://${address}/metrics`;
}

/** The host:port of a metrics announcement line (text, or a JSON log line whose msg it is), else undefined. */
export function parseMetricsAnnouncement(line: string): string | undefined {
  return /^(?:coordinator|worker): metrics on http:\/\/(\S+)\/metrics$/.exec(logText(line))?.[1];
}

/** The targets file (Prometheus file_sd format) the coordinator keeps in its run directory. */
export const METRICS_TARGETS_FILE = 'metrics-targets.json';

export interface TargetGroup {
  targets: string[];
  labels: Record<string, string>;
}

/** An address Prometheus can scrape: a wildcard listen address (0.0.0.0, ::) becomes this machine's name. */
export function scrapeAddress(address: string): string {
  const m = /^(.*):(\d+)$/.exec(address);
  if (!m) return address;
  return m[1] === '0.0.0.0' || m[1] === '[::]' ? `${hostname()}:${m[2]}` : address;
}

/** The coordinator and the local workers whose metrics are known, one group each (file_sd_configs). */
export function targetGroups(coordinator: string | undefined, workers: ReadonlyMap<number, string>): TargetGroup[] {
  const groups: TargetGroup[] = [];
  if (coordinator) groups.push({ targets: [coordinator], labels: { role: 'coordinator' } });
  for (const [i, address] of [...workers].sort((a, b) => a[0] - b[0])) groups.push({ targets: [address], labels: { role: 'worker', worker: `local-${i}` } });
  return groups;
}
