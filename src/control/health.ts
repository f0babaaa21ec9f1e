/**
 * The standard gRPC health service (grpc.health.v1.Health, npm grpc-health-check), which
 * Kubernetes' native `grpc:` probes and `grpc_health_probe` speak. Two service names:
 *
 * - `""` (the server as a whole) is readiness: the coordinator is SERVING once its control
 *   server listens; a worker only while it has joined a run (its instruction stream is open).
 * - `liveness` is SERVING as long as the process answers at all: a probe of it fails only
 *   when the process is gone or its event loop has been stuck for the probe's whole timeout.
 *
 * The answers carry nothing but the status, and need no token: the kubelet has none.
 */
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation, type ServingStatus } from 'grpc-health-check';

export const READINESS_SERVICE = '';
export const LIVENESS_SERVICE = 'liveness';

export class HealthStatus {
  readonly implementation = new HealthImplementation({ [READINESS_SERVICE]: 'NOT_SERVING', [LIVENESS_SERVICE]: 'SERVING' });
  #ready = false;

  get ready(): boolean {
    return this.#ready;
  }

  setReady(ready: boolean): void {
    if (ready === this.#ready) return;
    this.#ready = ready;
    const status: ServingStatus = ready ? 'SERVING' : 'NOT_SERVING';
    this.implementation.setStatus(READINESS_SERVICE, status);
  }

  /** Adds the Health service to a grpc-js server (before it binds). */
  addTo(server: grpc.Server): void {
    this.implementation.addToServer(server);
  }
}

/**
 * A plaintext grpc-js server with only the health service, for a process whose own port
 * cannot answer probes (a worker: its data plane exists only once it has joined, and
 * checks the run's token or mutual TLS on every call, while the kubelet has neither).
 */
export class HealthServer {
  private constructor(
    private readonly server: grpc.Server,
    readonly port: number,
  ) {}

  static async start(status: HealthStatus, host: string, port: number): Promise<HealthServer> {
    const server = new grpc.Server({ 'grpc.max_receive_message_length': 1024 });
    status.addTo(server);
    const bound = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`${host.includes(':') ? `[${host}]` : host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    return new HealthServer(server, bound);
  }

  close(): void {
    this.server.forceShutdown();
  }
}
