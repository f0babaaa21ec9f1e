/**
 * `coordinator start`: from command-line settings to a running coordinator with its local
 * workers. With no settings at all it is the README's main job: the shipped sample corpus
 * prepared under the run directory, one local worker per core, a small MLM model trained
 * with AdaFactor and recompute, checkpoints under runs/<run-id>/.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { JoinToken, type TlsMaterial } from '../comm/auth.js';
import { readRunToken, TOKEN_ENV, TOKEN_FILE_ENV, tokenEnvironment, tokenGiven } from '../control/run-token.js';
import { writeFileAtomically } from '../checkpoint/atomic-write.js';
import { MANIFEST_FILE, prepare } from '../data/prepare.js';
import type { Application } from '../model/build.js';
import { type BertConfig, presetConfig } from '../model/config.js';
import { createOptimizer, type OptimizerConfig } from '../optim/config.js';
import { readManifest } from '../data/dataset.js';
import { Coordinator, CoordinatorError, type CoordinatorSummary } from './coordinator.js';
import type { Balance } from './shares.js';
import { LocalWorkers } from './local-workers.js';
import { cpusToPin } from './cpu-pinning.js';
import { guardObserver } from './observer.js';
import { type Logger, type LogFn, pemSecrets } from '../log/logger.js';
import { CoordinatorMetrics, type MetricsEndpoint, METRICS_TARGETS_FILE, scrapeAddress, startMetricsEndpoint, targetGroups } from '../metrics/metrics.js';
import { RunHistory } from '../dashboard/history.js';
import { type Dashboard, startDashboard } from '../dashboard/server.js';


const SAMPLE_DIR = fileURLToPath(new URL('../../../data/sample/', import.meta.url));

export interface StartSettings {
  runDir?: string;
  resume?: string;
  data?: string;
  /** `--init`: a tfjs LayersModel folder the run starts from (see CoordinatorOptions.init). */
  init?: string;
  /** A bert_config.json already parsed, or a preset name. */
  model: BertConfig | string;
  application: Application;
  optimizer: OptimizerConfig;
  steps: number;
  globalBatch: number;
  microBatch: number;
  /** See RunSpec. Default 'none'. */
  allreduceCompression?: 'none' | 'fp16';
  /** See RunSpec. Default false. */
  shardOptimizer?: boolean;
  /** How a step's batch is split across the ranks (see shares.ts). Default 'dynamic'. */
  balance?: Balance;
  seed: number;
  clipNorm: number;
  recompute: boolean;
  checkpointEvery: number;
  keep: number;
  checksumEvery: number;
  localWorkers?: number;
  /** Pin local worker i to the i-th CPU this process may run on (cpu-pinning.ts). */
  pinWorkers?: boolean;
  workers?: number;
  minWorkers: number;
  backend: string;
  host: string;
  port: number;
  tokenFile?: string;
  tls?: TlsMaterial;
  /** The files `tls` was read from: local workers are given them. */
  tlsFiles?: { ca: string; cert: string; key: string };
  joinTimeoutMs: number;
  /** Default: joinTimeoutMs. */
  rejoinTimeoutMs?: number;
  stepTimeoutMs: number;
  heartbeatTimeoutMs: number;
  /** See CoordinatorOptions. */
  failureBackoffMs?: number;
  maxFailures?: number;
  logEvery: number;
  /** A log line (its text, and for the JSON log its fields and level). */
  log: LogFn;
  /**
   * The logger behind `log`, when there is one (the CLI's): it is told the run's context
   * (run id, generation, step) and secrets (the token, the TLS key), and forwards the local
   * workers' lines, which are then in its format. Without it local workers log text, forwarded
   * to `log` as `  [worker i] <line>`.
   */
  logging?: Pick<Logger, 'format' | 'setContext' | 'redact' | 'forward'>;
  /** Serve Prometheus metrics on this port (0: a free one); the local workers then serve theirs on free ports. Absent: no metrics. */
  metricsPort?: number | undefined;
  /** Default 127.0.0.1. */
  metricsHost?: string | undefined;
  /** Serve the live dashboard on this port (0: a free one); its URL is logged. Absent: no dashboard. */
  dashboardPort?: number | undefined;
  /** Default 127.0.0.1; any other than a loopback address asks for the run's token. */
  dashboardHost?: string | undefined;
}

export interface StartResult extends CoordinatorSummary {
  readonly runId: string;
}

/** `YYYYMMDD-HHMMSS` in local time: run and save folders named by when they began. */
export function timestamp(now = new Date()): string {
  const two = (n: number) => String(n).padStart(2, '0');
  return `${now.getFullYear()}${two(now.getMonth() + 1)}${two(now.getDate())}-${two(now.getHours())}${two(now.getMinutes())}${two(now.getSeconds())}`;
}

/** The run's join token: from a file or the environment, else a new one kept in the run directory (mode 0600) for workers started elsewhere. */
async function joinToken(settings: StartSettings, runDir: string): Promise<{ token: JoinToken; file?: string }> {
  const env = tokenEnvironment(settings.tokenFile);
  if (tokenGiven(env)) return { token: readRunToken(env), file: env[TOKEN_FILE_ENV] };
  const file = path.join(runDir, 'join-token');
  if (existsSync(file)) return { token: readRunToken(tokenEnvironment(file, {})), file };
  const token = randomBytes(32).toString('hex');
  await writeFileAtomically(file, async (h) => {
    await h.chmod(0o600);
    await h.writeFile(`${token}\n`);
  });
  return { token: new JoinToken(token), file };
}

/** The data: the given folder, or the sample corpus prepared once under the run directory. */
async function dataFolder(settings: StartSettings, runDir: string): Promise<string> {
  if (settings.data) return settings.data;
  const out = path.join(runDir, 'data');
  if (existsSync(path.join(out, MANIFEST_FILE))) return out;
  settings.log(`data: preparing the sample corpus (${path.join(SAMPLE_DIR, 'corpus.txt')}) into ${out}`);
  await prepare({
    corpus: [path.join(SAMPLE_DIR, 'corpus.txt')],
    vocab: path.join(SAMPLE_DIR, 'vocab.txt'),
    out,
    task: settings.application === 'unilm' ? 'seq2seq' : 'mlm',
    maxLength: 64,
    seed: settings.seed,
    recordsPerShard: 2000,
    documents: 'blank-line',
    lowerCase: true,
    force: true,
  });
  return out;
}

export async function startRun(settings: StartSettings, stop?: AbortSignal): Promise<StartResult> {
  const runDir = settings.resume ?? settings.runDir ?? path.join('runs', `run-${timestamp()}`);
  const runId = path.basename(path.resolve(runDir)).replace(/[^\w.-]/g, '_').slice(0, 100) || 'run';
  // every line of the run: its id, generation and last committed step (a line about another step says so)
  let coordinator: Coordinator | undefined = undefined;
  settings.logging?.setContext(() => ({ runId, ...coordinator?.logContext }));
  await fs.mkdir(runDir, { recursive: true });
  const dataDir = await dataFolder(settings, runDir);
  const { manifest } = await readManifest(dataDir);
  const model = typeof settings.model === 'string' ? presetConfig(settings.model, manifest.vocab.size, { max_position_embeddings: Math.max(512, manifest.maxLength) }) : settings.model;
  if (model.vocab_size < manifest.vocab.size) throw new CoordinatorError(`the model's vocab_size ${model.vocab_size} is smaller than the vocabulary of the data in ${dataDir} (${manifest.vocab.size} tokens)`);
  const localWorkers = settings.localWorkers ?? Math.max(1, availableParallelism());
  // checked before anything starts: a run asked to pin that cannot fails at once
  const pinCpus = settings.pinWorkers && localWorkers > 0 ? cpusToPin() : undefined;
  if (pinCpus) settings.log(`local workers pinned to CPUs ${Array.from({ length: localWorkers }, (_, i) => pinCpus[i % pinCpus.length]).join(', ')} (worker 0 first)`, { pinnedCpus: pinCpus.join(',') });
  const workers = settings.workers ?? localWorkers;
  if (settings.shardOptimizer && !createOptimizer(settings.optimizer).shardableRule()) {
    settings.log(`warning: --shard-optimizer: the optimizer (${settings.optimizer.type}) cannot be sharded (that needs AdaFactor without a first moment, and wrappers that only schedule the learning rate); every worker runs the whole update`, { shardOptimizer: false }, 'warn');
  }
  const { token, file: tokenFile } = await joinToken(settings, runDir);
  // the header is the only way out of a JoinToken
  const tokenValue = token.header().slice('Bearer '.length);
  settings.logging?.redact(tokenValue);
  if (settings.tls) settings.logging?.redact(...pemSecrets(settings.tls.key));
  if (workers > localWorkers) settings.log(`waiting for ${workers - localWorkers} worker(s) started elsewhere: \`worker start --coordinator <address>\` with ${TOKEN_FILE_ENV}=${tokenFile ?? '<the token file>'}`, { awaitedWorkers: workers - localWorkers });
  let local: LocalWorkers | undefined;
  const metrics = await startMetrics(settings, runDir);
  let dashboard: { history: RunHistory; server: Dashboard } | undefined;
  try {
    dashboard = await startRunDashboard(settings, runId, token);
  } catch (e) {
    await metrics?.close();
    throw e;
  }
  const forward = (i: number, line: string, level?: 'warn') => (settings.logging ? settings.logging.forward(i, line, level) : settings.log(`  [worker ${i}] ${line}`, { localWorker: i }, level));
  coordinator = new Coordinator({
    runDir,
    runId,
    dataDir,
    spec: {
      seed: settings.seed,
      application: settings.application,
      model,
      optimizer: settings.optimizer,
      clipNorm: settings.clipNorm,
      recompute: settings.recompute,
      microBatch: settings.microBatch,
      collectiveDeadlineMs: settings.stepTimeoutMs,
      allreduceCompression: settings.allreduceCompression ?? 'none',
      shardOptimizer: settings.shardOptimizer ?? false,
    },
    globalBatch: settings.globalBatch,
    steps: settings.steps,
    checkpointEvery: settings.checkpointEvery,
    keepCheckpoints: settings.keep,
    checksumEvery: settings.checksumEvery,
    balance: settings.balance ?? 'dynamic',
    workers,
    minWorkers: Math.min(settings.minWorkers, workers),
    token,
    tls: settings.tls,
    host: settings.host,
    port: settings.port,
    joinTimeoutMs: settings.joinTimeoutMs,
    rejoinTimeoutMs: settings.rejoinTimeoutMs ?? settings.joinTimeoutMs,
    heartbeatTimeoutMs: settings.heartbeatTimeoutMs,
    failureBackoffMs: settings.failureBackoffMs ?? 10_000,
    maxFailures: settings.maxFailures ?? 20,
    stepTimeoutMs: settings.stepTimeoutMs,
    resume: settings.resume !== undefined,
    init: settings.init,
    logEvery: settings.logEvery,
    log: settings.log,
    stop,
    metrics: metrics?.metrics,
    observer: dashboard ? guardObserver(dashboard.history, settings.log) : undefined,
    onListening: (address) => {
      if (localWorkers === 0) return;
      local = new LocalWorkers({
        count: localWorkers,
        coordinator: address,
        // the header is the only way out of a JoinToken; children get the token by environment
        tokenEnv: { [TOKEN_ENV]: tokenValue },
        backend: settings.backend,
        tlsFiles: settings.tlsFiles,
        logFormat: settings.logging?.format ?? 'text',
        onLine: (i, line) => forward(i, line),
        onExit: (i, how) => forward(i, how, 'warn'),
        metricsHost: metrics ? (settings.metricsHost ?? '127.0.0.1') : undefined,
        onMetrics: (i, address) => metrics?.workerListens(i, address),
        pinCpus,
      });
      local.start();
    },
  });
  try {
    const summary = await coordinator.run();
    dashboard?.history.ended({ lastStep: summary.lastStep, stoppedEarly: summary.stoppedEarly });
    return { ...summary, runId };
  } catch (e) {
    dashboard?.history.ended({ error: (e as Error).message });
    throw e;
  } finally {
    await local?.stop();
    await metrics?.close();
    await dashboard?.server.close();
  }
}

/** The live dashboard (src/dashboard) when --dashboard-port is given; its URL is logged, never the token. */
async function startRunDashboard(settings: StartSettings, runId: string, token: JoinToken): Promise<{ history: RunHistory; server: Dashboard } | undefined> {
  if (settings.dashboardPort === undefined) return undefined;
  const history = new RunHistory({ runId, steps: settings.steps, globalBatch: settings.globalBatch });
  const server = await startDashboard({ history, host: settings.dashboardHost ?? '127.0.0.1', port: settings.dashboardPort, token });
  settings.log(`coordinator: dashboard on ${server.url}${server.tokenRequired ? ' (it asks for the run\'s join token, or open it once with ?token=<token>)' : ''}`);
  return { history, server };
}

/**
 * The coordinator's metrics endpoint, and `<run-dir>/metrics-targets.json`: the coordinator's
 * and the local workers' metrics addresses in Prometheus's file_sd format, rewritten as
 * the local workers announce theirs.
 */
async function startMetrics(settings: StartSettings, runDir: string): Promise<{ metrics: CoordinatorMetrics; workerListens(i: number, address: string): void; close(): Promise<void> } | undefined> {
  if (settings.metricsPort === undefined) return undefined;
  const metrics = new CoordinatorMetrics();
  const announce = settings.logging?.format === 'json' ? (line: string, url: string) => settings.log(line, { metricsUrl: url }) : undefined;
  const endpoint: MetricsEndpoint = await startMetricsEndpoint(metrics.registry, 'coordinator', settings.metricsHost ?? '127.0.0.1', settings.metricsPort, announce);
  const workers = new Map<number, string>();
  const file = path.join(runDir, METRICS_TARGETS_FILE);
  let writing: Promise<void> = Promise.resolve();
  const write = () => {
    const text = `${JSON.stringify(targetGroups(scrapeAddress(endpoint.address), workers), null, 2)}\n`;
    writing = writing.then(() => writeFileAtomically(file, (h) => h.writeFile(text))).catch((e: Error) => settings.log(`warning: cannot write ${file}: ${e.message}`, { file }, 'warn'));
  };
  write();
  await writing;
  return {
    metrics,
    workerListens: (i, address) => {
      workers.set(i, scrapeAddress(address));
      write();
    },
    close: async () => {
      await writing;
      await endpoint.close();
    },
  };
}
