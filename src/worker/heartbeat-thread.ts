/**
 * The worker's heartbeat, on its own thread: tfjs computes a step synchronously on the main
 * thread, for longer than a heartbeat timeout on a large model, and a timer there would fall
 * silent exactly when the worker is busiest. A stopped process (SIGSTOP) stops this thread
 * too, which is what the coordinator must notice; a main thread stuck in a step is caught by
 * the step deadline instead.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ControlClient } from '../control/client.js';
import type { TlsFiles } from '../control/server.js';

export interface HeartbeatThreadData {
  readonly coordinator: string;
  readonly authorization: string;
  readonly tls: TlsFiles | undefined;
  readonly workerId: number;
  readonly intervalMs: number;
}

const data = workerData as HeartbeatThreadData;
// Buffers arrive as plain Uint8Arrays across threads; grpc-js wants Buffers
const tls = data.tls && { ca: Buffer.from(data.tls.ca), cert: Buffer.from(data.tls.cert), key: Buffer.from(data.tls.key) };
const client = new ControlClient(data.coordinator, { header: () => data.authorization, matches: () => false }, tls);
let progress = { workerId: data.workerId, generation: 0, step: 0 };
parentPort!.on('message', (m: { workerId?: number; generation: number; step: number } | 'stop') => {
  if (m === 'stop') {
    clearInterval(timer);
    client.close();
    parentPort!.close();
    return;
  }
  progress = { ...progress, ...m };
});
const timer = setInterval(() => {
  client.heartbeat(progress).catch(() => undefined);
}, data.intervalMs);
