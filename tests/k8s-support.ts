/** What the k8s-* tests share: a grpc.health.v1 client, processes they start and clean up, bounded waits. */
import { type ChildProcess, spawn, type SpawnOptions, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';

export interface HealthAnswer {
  /** SERVING, NOT_SERVING... when the server answered. */
  status?: string;
  /** The gRPC status code when it did not (UNAVAILABLE: nothing listens; NOT_FOUND: unknown service). */
  code?: grpc.status;
}

/** One grpc.health.v1.Health/Check call, as the kubelet's grpc probe makes it: plaintext, no token. */
export function healthCheck(address: string, service = '', timeoutMs = 3000): Promise<HealthAnswer> {
  const Client = grpc.makeClientConstructor(healthService, 'grpc.health.v1.Health');
  const client = new Client(address, grpc.credentials.createInsecure()) as grpc.Client & Record<string, (...args: unknown[]) => void>;
  return new Promise((resolve) => {
    client['check']!({ service }, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, reply?: { status: string }) => {
      client.close();
      resolve(err ? { code: err.code } : { status: reply!.status });
    });
  });
}

/** Polls `probe` until `done` holds for its answer (bounded; ends early when one of `watched` exits); returns that answer. */
export async function waitForAnswer<T>(probe: () => Promise<T>, done: (answer: T) => boolean, timeoutMs: number, what: () => string, watched: readonly Started[] = []): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const answer = await probe();
    if (done(answer)) return answer;
    const exited = watched.find((s) => s.child.exitCode !== null || s.child.signalCode !== null);
    if (exited) throw new Error(`a process exited (${exited.child.exitCode ?? exited.child.signalCode}) while waiting for ${what()}`);
    if (Date.now() > end) throw new Error(`timed out waiting for ${what()}; last answer ${JSON.stringify(answer)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

export interface Started {
  readonly child: ChildProcess;
  readonly output: { text: string };
}

/** Processes a test started: each is killed (SIGKILL) by `killAll`, whatever happened. */
export class Processes {
  readonly list: Started[] = [];

  start(command: string, args: string[], options: SpawnOptions): Started {
    const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    const output = { text: '' };
    child.stdout!.on('data', (d: Buffer) => (output.text += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (output.text += d.toString()));
    const started = { child, output };
    this.list.push(started);
    return started;
  }

  killAll(): void {
    for (const { child } of this.list) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

export { exitOf, waitFor } from './fixtures/processes.js';

// ---- the manifests ----

export const REPO = fileURLToPath(new URL('../../', import.meta.url));

/** A rendered Kubernetes object, loosely typed: the tests read what they check. */
export type K8sObject = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> }; [key: string]: any };

export function kubectlAvailable(): boolean {
  return spawnSync('kubectl', ['version', '--client'], { stdio: 'ignore' }).status === 0;
}

export const SKIP_NO_KUBECTL = 'kubectl is not installed (.ci/run installs Debian\'s kubernetes-client when it is missing): the manifests cannot be rendered';

/** `kubectl kustomize k8s/overlays/<overlay>`, parsed. */
export function renderOverlay(overlay: string): K8sObject[] {
  const r = spawnSync('kubectl', ['kustomize', path.join(REPO, 'k8s', 'overlays', overlay)], { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`kubectl kustomize k8s/overlays/${overlay} failed (${r.status ?? r.signal}): ${r.stderr}${r.error?.message ?? ''}`);
  return parseAllDocuments(r.stdout).map((d) => d.toJS() as K8sObject).filter((o) => o !== null);
}

export function one(objects: readonly K8sObject[], kind: string, name?: string): K8sObject {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  if (found.length !== 1) throw new Error(`expected one ${kind}${name ? ` named ${name}` : ''}, found ${found.length}`);
  return found[0]!;
}

/** The StatefulSet whose pods carry app.kubernetes.io/component=<component>. */
export function statefulSet(objects: readonly K8sObject[], component: string): K8sObject {
  const found = objects.filter((o) => o.kind === 'StatefulSet' && o.spec.template.metadata.labels['app.kubernetes.io/component'] === component);
  if (found.length !== 1) throw new Error(`expected one StatefulSet of ${component}s, found ${found.length}`);
  return found[0]!;
}

/** The package's bins (package.json): what the images put on PATH and the manifests run. */
export function packageBins(): Record<string, string> {
  return (JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { bin: Record<string, string> }).bin;
}
