/**
 * The manifests really start the system: the cpu overlay's rendered coordinator and worker
 * containers (command, args, environment, volumes, probes) run as local processes on
 * 127.0.0.1 and train a few steps. What a cluster would provide is mapped onto this
 * machine: Service and pod DNS names to 127.0.0.1 (a 0.0.0.0 bind too), each pod's
 * declared ports to free ports (a Service port to its target's), every volume mount to a
 * temporary folder (the ConfigMap's files, the token Secret's files, the claim, emptyDirs),
 * the image's entry points to the package's bins. The run file is the ConfigMap's with a
 * tiny model and 3 steps. The pods' gRPC probes are asked as the kubelet would ask them.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { parse, stringify } from 'yaml';
import { freePort } from '../bench/common.js';
import { exitOf, healthCheck, type K8sObject, kubectlAvailable, packageBins, Processes, REPO, renderOverlay, SKIP_NO_KUBECTL, type Started, statefulSet, waitForAnswer } from './k8s-support.js';
import { jsonLines, messages } from './log-lines.js';

/** What `kubectl -n pretrain create secret generic pretrain-token --from-file=token=...` holds. */
const TOKEN_SECRET = { name: 'pretrain-token', data: { token: 'k8s-local-test-token-0123456789abcdef\n' } };

interface LocalPod {
  readonly name: string;
  readonly command: string;
  readonly args: string[];
  readonly env: Record<string, string>;
  /** container port -> local port */
  readonly ports: Map<number, number>;
  /** mount path -> local folder */
  readonly mounts: Map<string, string>;
  readonly probes: { kind: string; address: string; service: string }[];
}

/** $(VAR) from the container's environment, $$ for a literal $ (Kubernetes' expansion of command, args and env). */
function expand(value: string, env: Record<string, string>): string {
  return value.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string | undefined) => (m === '$$' ? '$' : name !== undefined && name in env ? env[name]! : m));
}

class LocalCluster {
  readonly pods = new Map<string, LocalPod>();

  constructor(
    readonly objects: readonly K8sObject[],
    readonly root: string,
  ) {}

  private services(): K8sObject[] {
    return this.objects.filter((o) => o.kind === 'Service');
  }

  /** A DNS name of the cluster: a Service (`coordinator`) or a pod of a headless one (`worker-0.workers.<ns>.svc`). */
  private resolve(host: string): { service: K8sObject; pod?: string } | undefined {
    const labels = host.split('.');
    for (const service of this.services()) {
      if (labels[0] === service.metadata.name) return { service };
      if (labels[1] === service.metadata.name && service.spec.clusterIP === 'None') return { service, pod: labels[0] };
    }
    return undefined;
  }

  private readonly handedPorts = new Set<number>();

  /** A free port no pod of this cluster was given yet: two probes of free ports may return the same one, as the kernel's are free again at once. */
  private async distinctFreePort(): Promise<number> {
    for (;;) {
      const port = await freePort();
      if (!this.handedPorts.has(port)) {
        this.handedPorts.add(port);
        return port;
      }
    }
  }

  /** The local port behind a Service's port (through its targetPort to the selected pod's container port). */
  private servicePort(service: K8sObject, port: number, podName?: string): number {
    const selected = [...this.pods.values()].filter((p) => podName === undefined || p.name === podName);
    const sets = this.objects.filter((o) => o.kind === 'StatefulSet' && Object.entries(service.spec.selector as Record<string, string>).every(([k, v]) => o.spec.template.metadata.labels[k] === v));
    assert.equal(sets.length, 1, `Service ${service.metadata.name} selects one StatefulSet`);
    const container = sets[0]!.spec.template.spec.containers[0];
    const servicePort = (service.spec.ports as K8sObject[]).find((p) => p.port === port);
    // a pod of a headless Service is dialled on its container ports directly
    const target = servicePort ? (typeof servicePort.targetPort === 'string' ? (container.ports as K8sObject[]).find((p) => p.name === servicePort.targetPort)?.containerPort : (servicePort.targetPort ?? port)) : port;
    const pod = selected.find((p) => p.name.startsWith(`${sets[0]!.metadata.name}-`) && p.ports.has(target));
    assert.ok(pod, `a started pod behind ${service.metadata.name}:${port}`);
    return pod.ports.get(target)!;
  }

  /** A value of the container's args or environment, as it reads on this machine. */
  private localize(value: string, pod: LocalPod): string {
    for (const [mountPath, local] of pod.mounts) if (value === mountPath || value.startsWith(`${mountPath}/`)) return local + value.slice(mountPath.length);
    const hostPort = /^([^:]+):(\d+)$/.exec(value);
    if (hostPort) {
      const [host, port] = [hostPort[1]!, Number(hostPort[2])];
      if (host === '0.0.0.0') return `127.0.0.1:${pod.ports.get(port) ?? assert.fail(`${pod.name} listens on undeclared port ${port}`)}`;
      const target = this.resolve(host);
      if (target) return `127.0.0.1:${this.servicePort(target.service, port, target.pod)}`;
      return value;
    }
    if (value === '0.0.0.0' || this.resolve(value)) return '127.0.0.1';
    if (/^\d+$/.test(value) && pod.ports.has(Number(value))) return String(pod.ports.get(Number(value)));
    return value;
  }

  /** Pod `ordinal` of a StatefulSet, ready to run here. */
  async pod(set: K8sObject, ordinal: number): Promise<LocalPod> {
    const name = `${set.metadata.name}-${ordinal}`;
    const spec = set.spec.template.spec;
    assert.equal(spec.containers.length, 1);
    const c = spec.containers[0];
    const dir = path.join(this.root, name);
    const ports = new Map<number, number>();
    for (const p of c.ports as K8sObject[]) ports.set(p.containerPort, await this.distinctFreePort());
    const mounts = new Map<string, string>();
    const claims = new Set(((set.spec.volumeClaimTemplates ?? []) as K8sObject[]).map((t) => t.metadata.name));
    for (const m of c.volumeMounts as K8sObject[]) {
      assert.equal(m.subPath, undefined);
      const local = path.join(dir, 'volumes', m.name);
      await mkdir(local, { recursive: true });
      const volume = (spec.volumes as K8sObject[]).find((v) => v.name === m.name);
      if (volume?.configMap) {
        const map = this.objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === volume.configMap.name);
        assert.ok(map, `ConfigMap ${volume.configMap.name}`);
        for (const [key, text] of Object.entries(map.data as Record<string, string>)) await writeFile(path.join(local, key), text);
      } else if (volume?.secret) {
        assert.equal(volume.secret.secretName, TOKEN_SECRET.name);
        for (const [key, text] of Object.entries(TOKEN_SECRET.data)) await writeFile(path.join(local, key), text, { mode: volume.secret.defaultMode ?? 0o644 });
      } else {
        assert.ok(volume?.emptyDir || claims.has(m.name), `volume ${m.name} is an emptyDir or the claim`);
      }
      mounts.set(m.mountPath, local);
    }
    const pod: LocalPod = { name, command: '', args: [], env: {}, ports, mounts, probes: [] };
    const env: Record<string, string> = {};
    for (const e of (c.env ?? []) as K8sObject[]) {
      if (e.valueFrom) {
        const field = e.valueFrom.fieldRef?.fieldPath;
        assert.ok(field === 'metadata.name' || field === 'metadata.namespace', `env ${e.name} from ${JSON.stringify(e.valueFrom)}`);
        env[e.name] = field === 'metadata.name' ? name : (set.metadata.namespace ?? assert.fail('a namespace'));
      } else env[e.name] = expand(e.value ?? '', env);
    }
    for (const [k, v] of Object.entries(env)) pod.env[k] = this.localize(v, pod);
    const [entry, ...rest] = c.command as string[];
    const bins = packageBins();
    assert.ok(entry! in bins, `${entry} is an entry point of the image`);
    Object.assign(pod, { command: path.join(REPO, bins[entry!]!) });
    pod.args.push(...rest, ...(c.args as string[]).map((a) => expand(a, env)));
    for (const kind of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      const probe = c[kind];
      if (!probe) continue;
      assert.ok(probe.grpc, `${name}: ${kind} is a grpc probe`);
      pod.probes.push({ kind, address: `127.0.0.1:${ports.get(probe.grpc.port)}`, service: probe.grpc.service ?? '' });
    }
    this.pods.set(name, pod);
    return pod;
  }

  /** Localizes the args now that every pod's ports are known, and starts the pod's process. */
  start(pod: LocalPod, processes: Processes, workdir: string): Started {
    const args = pod.args.map((a) => this.localize(a, pod));
    const tmp = pod.mounts.get('/tmp');
    return processes.start(process.execPath, [pod.command, ...args], { cwd: workdir, env: { PATH: process.env['PATH'] ?? '', ...(tmp ? { TMPDIR: tmp } : {}), ...pod.env } });
  }
}

async function probesAnswer(pod: LocalPod, started: readonly Started[], output: () => string): Promise<void> {
  for (const probe of pod.probes) {
    await waitForAnswer(() => healthCheck(probe.address, probe.service), (a) => a.status === 'SERVING', 40_000, () => `${pod.name}'s ${probe.kind}\n${output()}`, started);
  }
}

const kubectl = kubectlAvailable();

describe('k8s/ manifests as local processes', { skip: kubectl ? false : SKIP_NO_KUBECTL }, () => {
  it('the cpu overlay\'s coordinator and workers, run as rendered (names and ports mapped to loopback, volumes to folders), train 3 steps', { timeout: 120_000 }, async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'k8s-local-'));
    const processes = new Processes();
    try {
      const objects = renderOverlay('cpu');
      // the run file: the ConfigMap's, with a tiny model and 3 steps
      const config = objects.find((o) => o.kind === 'ConfigMap')!;
      const run = parse(config.data['run.yaml'] as string) as Record<string, unknown>;
      config.data['run.yaml'] = stringify({ ...run, preset: 'L1-H32', steps: 3, globalBatch: 4, checkpointEvery: 3, logEvery: 1, checksumEvery: 1 });
      const cluster = new LocalCluster(objects, root);
      const coordinatorSet = statefulSet(objects, 'coordinator');
      const workerSet = statefulSet(objects, 'worker');
      assert.equal(run['workers'], workerSet.spec.replicas);
      const coordinator = await cluster.pod(coordinatorSet, 0);
      const workers = [];
      for (let i = 0; i < workerSet.spec.replicas; i++) workers.push(await cluster.pod(workerSet, i));
      // the image's working directory is read-only: nothing may be written there
      const workdir = path.join(root, 'workdir');
      await mkdir(workdir);

      const c = cluster.start(coordinator, processes, workdir);
      const all = () => processes.list.map((p) => p.output.text).join('\n----\n');
      // it prepares the sample corpus onto the claim, then listens: startup, readiness, liveness
      await probesAnswer(coordinator, [c], all);
      // the first worker joins and is ready, while the run waits for the others
      const first = cluster.start(workers[0]!, processes, workdir);
      await probesAnswer(workers[0]!, [c, first], all);
      assert.doesNotMatch(messages(c.output.text), /^step /m);
      for (const w of workers.slice(1)) cluster.start(w, processes, workdir);

      assert.equal(await exitOf(c.child, 60_000), 0, all());
      for (const p of processes.list.slice(1)) assert.equal(await exitOf(p.child, 30_000), 0, all());
      // the manifests ask for the JSON log: every line of stdout an object with the run's context
      const records = processes.list.map((p) => jsonLines(p.output.text));
      for (const [i, list] of records.entries()) {
        assert.ok(list.length > 0, all());
        for (const r of list) assert.ok(typeof r.time === 'string' && typeof r.level === 'string' && typeof r.msg === 'string', JSON.stringify(r));
        for (const r of list.filter((r) => /^(step|checkpoint|worker \d+: generation)/.test(r.msg as string))) {
          assert.equal(typeof r.runId, 'string', JSON.stringify(r));
          assert.equal(typeof r.generation, 'number', JSON.stringify(r));
          assert.equal(typeof r.step, 'number', JSON.stringify(r));
          if (i > 0) assert.equal(typeof r.rank, 'number', JSON.stringify(r));
        }
      }
      const progress = records[0]!.find((r) => r.step === 3 && typeof r.loss === 'number');
      assert.ok(progress, all());
      assert.match(progress.msg as string, new RegExp(`step +3/3 .*workers ${workers.length}`));
      assert.equal(progress.workers, workers.length);
      assert.match(messages(c.output.text), /replicas identical/);
      for (const w of workers) {
        const dataPort = w.ports.get(Number(workerSet.spec.template.spec.containers[0].ports.find((p: K8sObject) => p.name === 'data').containerPort));
        assert.match(messages(all()), new RegExp(`worker \\d+: joined run .*data plane 127\\.0\\.0\\.1:${dataPort}`), `${w.name} serves its peers on its declared data port`);
      }
      // the run lives on the claim: its data, journal and checkpoints
      const claim = coordinator.mounts.get(coordinatorSet.spec.template.spec.containers[0].volumeMounts.find((m: K8sObject) => m.name === coordinatorSet.spec.volumeClaimTemplates[0].metadata.name).mountPath)!;
      const runDir = (await readdir(claim)).map((d) => path.join(claim, d));
      assert.equal(runDir.length, 1);
      assert.ok(existsSync(path.join(runDir[0]!, 'data', 'manifest.json')), 'the sample corpus prepared onto the claim');
      assert.ok((await readdir(runDir[0]!)).some((f) => /^ckpt-0*3$/.test(f)), 'the final checkpoint on the claim');
      assert.deepEqual(await readdir(workdir), [], 'nothing written to the working directory');
    } finally {
      processes.killAll();
      await rm(root, { recursive: true, force: true });
    }
  });
});
