#!/usr/bin/env node
/**
 * `worker start --coordinator host:port`: one model replica of a run. The join token comes
 * from the file named by PRETRAIN_TOKEN_FILE (or --token-file), else the PRETRAIN_TOKEN
 * variable: never from the command line.
 */
import { Option } from 'commander';
import { BACKEND_CHOICES, type BackendChoice } from '../src/backend/index.js';
import { AuthConfigError, loadTls } from '../src/comm/auth.js';
import { readRunToken, TOKEN_ENV, TOKEN_FILE_ENV, tokenEnvironment } from '../src/control/run-token.js';
import { createProgram, EXIT_FAILURE, EXIT_USAGE, nonNegativeNumber, runProgram } from '../src/cli/common.js';
import { TrainingWorker } from '../src/worker/training-worker.js';
import { ControlError } from '../src/control/client.js';
import { TrainingError } from '../src/train/step.js';
import { MetricsError, metricsPort, startMetricsEndpoint, WorkerMetrics } from '../src/metrics/metrics.js';


interface StartOptions {
  coordinator: string;
  backend: BackendChoice;
  host: string;
  name?: string;
  tokenFile?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  reconnectTimeout: number;
  metricsPort?: number;
  metricsHost: string;
}

function buildProgram() {
  const program = createProgram('worker', 'A worker of a multi-worker BERT/UniLM pretraining run: one model replica, all-reducing its gradients with its peers.');
  program
    .command('start')
    .description(`Join the coordinator's run and train until it says stop. The join token: the file in ${TOKEN_FILE_ENV} or --token-file, else ${TOKEN_ENV}.`)
    .requiredOption('--coordinator <host:port>', "the coordinator's control address")
    .addOption(new Option('--backend <name>', 'tfjs backend').choices(BACKEND_CHOICES).default('auto'))
    .option('--host <address>', 'where this worker serves its ring neighbours (an address the other workers can reach)', '127.0.0.1')
    .option('--name <name>', 'name in the coordinator\'s logs (default host:pid)')
    .option('--token-file <file>', `file holding the run's join token (default: ${TOKEN_FILE_ENV})`)
    .option('--tls-ca <file>', 'mutual TLS: the run\'s CA certificate')
    .option('--tls-cert <file>', 'mutual TLS: this worker\'s certificate')
    .option('--tls-key <file>', 'mutual TLS: this worker\'s key')
    .option('--reconnect-timeout <s>', 'when the coordinator goes away mid-run, keep the replica and join again for this long: a restarted coordinator resumes from it (0: exit at once)', nonNegativeNumber, 60)
    .option('--metrics-port <n>', 'serve Prometheus metrics at http://<metrics-host>:<n>/metrics (0: any free port, printed on stderr; default: no metrics)', metricsPort)
    .option('--metrics-host <address>', 'address the metrics listen on (0.0.0.0: every interface, e.g. in a pod)', '127.0.0.1')
    .action(async (opts: StartOptions) => {
      const token = readRunToken(tokenEnvironment(opts.tokenFile));
      const tls = loadTls({ ca: opts.tlsCa, cert: opts.tlsCert, key: opts.tlsKey });
      const metrics = opts.metricsPort === undefined ? undefined : new WorkerMetrics(opts.backend);
      const endpoint = metrics ? await startMetricsEndpoint(metrics.registry, 'worker', opts.metricsHost, opts.metricsPort!) : undefined;
      try {
        const worker = new TrainingWorker({ coordinator: opts.coordinator, token, tls, host: opts.host, backend: opts.backend, name: opts.name, reconnectMs: opts.reconnectTimeout * 1000, metrics, log: (line) => console.error(line) });
        const reason = await worker.run();
        console.error(`worker: stopped: ${reason}`);
      } finally {
        await endpoint?.close();
      }
    });
  return program;
}

// a local worker outlives a coordinator killed outright (it keeps its replica for the
// restarted one), and its output pipes die with that coordinator: lines go nowhere then
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});

process.exitCode = await runProgram(buildProgram(), process.argv, [
  [AuthConfigError, EXIT_USAGE],
  [TrainingError, EXIT_FAILURE],
  [ControlError, EXIT_FAILURE],
  [MetricsError, EXIT_FAILURE],
]);
// a worker owns sockets and timers of libraries; once its run is over nothing is left to wait for
process.exit();
