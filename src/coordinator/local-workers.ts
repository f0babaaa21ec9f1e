/**
 * Worker processes on this machine, started by `coordinator start` (one per core by
 * default: wasm gives a process one core). The join token reaches them through the
 * environment, never the command line (which `ps` shows to every user).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { parseMetricsAnnouncement } from '../metrics/metrics.js';
import type { LogFormat } from '../log/logger.js';

const WORKER_CLI = fileURLToPath(new URL('../../worker/cli.js', import.meta.url));

export interface LocalWorkersOptions {
  readonly count: number;
  readonly coordinator: string;
  /** The token's environment variable for the children. */
  readonly tokenEnv: Record<string, string>;
  readonly backend: string;
  /** Mutual TLS: the files the coordinator serves with, which local workers present as theirs (paths, not secrets). */
  readonly tlsFiles?: { readonly ca: string; readonly cert: string; readonly key: string } | undefined;
  /** The workers' `--log-format`: forwarded lines are of this format (default text). */
  readonly logFormat?: LogFormat;
  /** Each output line of worker i. */
  readonly onLine: (worker: number, line: string) => void;
  /** A worker exited (code or signal). */
  readonly onExit: (worker: number, how: string) => void;
  /** Serve each worker's metrics on a free port of this address (`--metrics-port 0`); absent: no metrics. */
  readonly metricsHost?: string | undefined;
  /** Worker i serves its metrics at this host:port (from its announcement line). */
  readonly onMetrics?: (worker: number, address: string) => void;
  /** Worker i runs pinned to CPU `pinCpus[i % length]` (`taskset -c`); absent: where the scheduler puts it. */
  readonly pinCpus?: readonly number[] | undefined;
}

export class LocalWorkers {
  private readonly children: ChildProcess[] = [];
  private readonly closed: Promise<void>[] = [];
  private stopping = false;

  constructor(private readonly options: LocalWorkersOptions) {}

  start(): void {
    for (let i = 0; i < this.options.count; i++) this.spawnOne(i);
  }

  private spawnOne(i: number): void {
    const o = this.options;
    const tls = o.tlsFiles ? ['--tls-ca', o.tlsFiles.ca, '--tls-cert', o.tlsFiles.cert, '--tls-key', o.tlsFiles.key] : [];
    const metrics = o.metricsHost === undefined ? [] : ['--metrics-port', '0', '--metrics-host', o.metricsHost];
    const argv = [WORKER_CLI, 'start', '--coordinator', o.coordinator, '--backend', o.backend, '--name', `local-${i}`, '--log-format', o.logFormat ?? 'text', ...tls, ...metrics];
    const cpu = o.pinCpus && o.pinCpus.length > 0 ? o.pinCpus[i % o.pinCpus.length] : undefined;
    const child = spawn(cpu === undefined ? process.execPath : 'taskset', cpu === undefined ? argv : ['-c', String(cpu), process.execPath, ...argv], {
      env: { ...process.env, ...o.tokenEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
      // their own process group: Ctrl-C in a terminal reaches the coordinator alone, which
      // finishes the step, checkpoints and stops them (a worker whose coordinator is gone exits)
      detached: true,
    });
    this.children.push(child);
    // 'close': exited, and stdout and stderr read to the end
    this.closed.push(new Promise((resolve) => child.once('close', () => resolve())));
    for (const stream of [child.stdout!, child.stderr!]) {
      createInterface({ input: stream }).on('line', (line) => {
        const metricsAt = parseMetricsAnnouncement(line);
        if (metricsAt !== undefined) o.onMetrics?.(i, metricsAt);
        o.onLine(i, line);
      });
    }
    child.on('exit', (code, signal) => {
      if (!this.stopping) o.onExit(i, signal ? `killed by ${signal}` : `exited with code ${code}`);
    });
  }

  /**
   * Waits `ownExitMs` for each child to exit by itself (the coordinator told it to stop, and
   * its last lines are worth having), then SIGTERM, then SIGKILL after `graceMs`; resolves
   * when every child is gone and its output read to the end.
   */
  async stop(graceMs = 5000, ownExitMs = 3000): Promise<void> {
    this.stopping = true;
    await Promise.all(
      this.children.map(async (child, i) => {
        const closed = this.closed[i]!;
        if (await settlesWithin(closed, ownExitMs)) return;
        child.kill('SIGTERM');
        // a stopped (SIGSTOP) worker acts on SIGTERM only once it runs again
        child.kill('SIGCONT');
        if (await settlesWithin(closed, graceMs)) return;
        child.kill('SIGKILL');
        await settlesWithin(closed, 2000);
      }),
    );
  }
}

/** Whether `promise` settled within `ms`. */
async function settlesWithin(promise: Promise<void>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
