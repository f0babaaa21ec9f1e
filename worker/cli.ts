#!/usr/bin/env node
/**
 * `worker start --coordinator host:port`: one model replica of a run. The join token comes
 * from the file named by PRETRAIN_TOKEN_FILE (or --token-file), else the PRETRAIN_TOKEN
 * variable: never from the command line.
 */
import { InvalidArgumentError, Option } from 'commander';
import { BACKEND_CHOICES, type BackendChoice } from '../src/backend/index.js';
import { AuthConfigError, loadTls } from '../src/comm/auth.js';
import { readRunToken, TOKEN_ENV, TOKEN_FILE_ENV, tokenEnvironment } from '../src/control/run-token.js';
import { createProgram, EXIT_FAILURE, EXIT_USAGE, nonNegativeInt, nonNegativeNumber, reportErrorsWith, runProgram } from '../src/cli/common.js';
import { LOG_FORMAT_CHOICES, LOG_FORMAT_ENV, LogConfigError, type LogFormatChoice, Logger, pemSecrets, resolveLogFormat } from '../src/log/logger.js';
import { HealthServer, HealthStatus } from '../src/control/health.js';
import { TrainingWorker } from '../src/worker/training-worker.js';
import { ControlError } from '../src/control/client.js';
import { TrainingError } from '../src/train/step.js';
import { MetricsError, metricsPort, startMetricsEndpoint, WorkerMetrics } from '../src/metrics/metrics.js';


interface StartOptions {
  coordinator: string;
  backend: BackendChoice;
  host: string;
  bind?: string;
  port: number;
  healthPort?: number;
  name?: string;
  tokenFile?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  reconnectTimeout: number;
  metricsPort?: number;
  metricsHost: string;
  logFormat?: LogFormatChoice;
}

function port(value: string): number {
  const n = nonNegativeInt(value);
  if (n > 65535) throw new InvalidArgumentError('expected a port number, 0 to 65535.');
  return n;
}

function buildProgram() {
  const program = createProgram('worker', 'A worker of a multi-worker BERT/UniLM pretraining run: one model replica, all-reducing its gradients with its peers.');
  program
    .command('start')
    .description(`Join the coordinator's run and train until it says stop. The join token: the file in ${TOKEN_FILE_ENV} or --token-file, else ${TOKEN_ENV}.`)
    .requiredOption('--coordinator <host:port>', "the coordinator's control address")
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(BACKEND_CHOICES).default('auto'))
    .option('--host <address>', 'where this worker serves its ring neighbours (an address the other workers can reach)', '127.0.0.1')
    .option('--bind <address>', 'where the data plane (and the health service) listen, when not --host: 0.0.0.0 in a pod whose --host is its DNS name (default: --host)')
    .option('--port <n>', 'the data plane\'s port (0: any free port)', port, 0)
    .option('--health-port <n>', 'serve the standard grpc.health.v1 service on this port (plaintext, no token; on --bind): "" is SERVING while the worker is in a run (readiness), "liveness" while the process answers (default: none)', port)
    .option('--name <name>', 'name in the coordinator\'s logs (default host:pid)')
    .option('--token-file <file>', `file holding the run's join token (default: ${TOKEN_FILE_ENV})`)
    .option('--tls-ca <file>', 'mutual TLS: the run\'s CA certificate')
    .option('--tls-cert <file>', 'mutual TLS: this worker\'s certificate')
    .option('--tls-key <file>', 'mutual TLS: this worker\'s key')
    .option('--reconnect-timeout <s>', 'when the coordinator goes away mid-run, keep the replica and join again for this long: a restarted coordinator resumes from it (0: exit at once)', nonNegativeNumber, 60)
    .option('--metrics-port <n>', 'serve Prometheus metrics at http://<metrics-host>:<n>/metrics (0: any free port, printed on stderr; default: no metrics)', metricsPort)
    .option('--metrics-host <address>', 'address the metrics listen on (0.0.0.0: every interface, e.g. in a pod)', '127.0.0.1')
    .addOption(
      new Option('--log-format <format>', `text: readable lines on stderr; json: JSON lines on stdout (time, level, msg, runId, generation, rank, step...); auto: text on a terminal, else json (default: ${LOG_FORMAT_ENV}, else auto)`).choices(
        LOG_FORMAT_CHOICES,
      ),
    )
    .action(async (opts: StartOptions) => {
      let worker: TrainingWorker | undefined;
      const logger = new Logger({ format: resolveLogFormat(opts.logFormat), name: 'worker', textStream: process.stderr, context: () => worker?.logContext ?? {} });
      reportErrorsWith((program, line, err, withStack) => logger.reportError(program, line, err, withStack));
      const token = readRunToken(tokenEnvironment(opts.tokenFile));
      // the header is the only way out of a JoinToken
      logger.redact(token.header().slice('Bearer '.length));
      const tls = loadTls({ ca: opts.tlsCa, cert: opts.tlsCert, key: opts.tlsKey });
      if (tls) logger.redact(...pemSecrets(tls.key));
      const metrics = opts.metricsPort === undefined ? undefined : new WorkerMetrics(opts.backend);
      const announce = logger.format === 'json' ? (line: string, url: string) => logger.info(line, { metricsUrl: url }) : undefined;
      const endpoint = metrics ? await startMetricsEndpoint(metrics.registry, 'worker', opts.metricsHost, opts.metricsPort!, announce) : undefined;
      const bind = opts.bind ?? opts.host;
      const health = new HealthStatus();
      const healthServer = opts.healthPort !== undefined
        ? await HealthServer.start(health, bind, opts.healthPort).catch((e: Error) => {
          throw new ControlError(`cannot serve the health service on ${bind}:${opts.healthPort} (${e.message})`);
        })
        : undefined;
      worker = new TrainingWorker({
        coordinator: opts.coordinator, token, tls, host: opts.host, bind, port: opts.port, backend: opts.backend, name: opts.name,
        reconnectMs: opts.reconnectTimeout * 1000, metrics, log: logger.log, onJoined: (joined) => health.setReady(joined),
      });
      try {
        const reason = await worker.run();
        logger.info(`worker: stopped: ${reason}`, { reason });
      } finally {
        healthServer?.close();
        await endpoint?.close();
      }
    });
  return program;
}

// a local worker outlives a coordinator killed outright (it keeps its replica for the
// restarted one), and its output pipes die with that coordinator: lines go nowhere then
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});
// as a container's first process (PID 1) a signal with no handler is ignored: leave on
// SIGTERM/SIGINT as any process would (the coordinator re-forms the ring without this worker)
for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => process.exit(128 + (signal === 'SIGTERM' ? 15 : 2)));

process.exitCode = await runProgram(buildProgram(), process.argv, [
  [AuthConfigError, EXIT_USAGE],
  [LogConfigError, EXIT_USAGE],
  [TrainingError, EXIT_FAILURE],
  [ControlError, EXIT_FAILURE],
  [MetricsError, EXIT_FAILURE],
]);
// a worker owns sockets and timers of libraries; once its run is over nothing is left to wait for
process.exit();
