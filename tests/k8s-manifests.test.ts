/**
 * k8s/: both overlays render with `kubectl kustomize`, every object validates against the
 * Kubernetes schemas (kubernetes-models; the PodMonitor against prometheus-operator's), and
 * the properties the deployment promises hold in what is rendered.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { readRunFile } from '../src/coordinator/run-config.js';
import { type K8sObject, kubectlAvailable, one, packageBins, renderOverlay, SKIP_NO_KUBECTL, statefulSet } from './k8s-support.js';

const OVERLAYS = ['cpu', 'gpu'] as const;
const NAMESPACE = 'pretrain';
const RUN_LABEL = { 'app.kubernetes.io/part-of': 'tfjs-pretrain' };

/** The model class of an object's apiVersion and kind, from kubernetes-models or prometheus-operator's models. */
async function modelOf(o: K8sObject): Promise<new (data: unknown) => { validate(): void }> {
  const [group, version] = o.apiVersion.includes('/') ? o.apiVersion.split('/') : ['', o.apiVersion];
  const module = group === 'monitoring.coreos.com' ? `@kubernetes-models/prometheus-operator/${group}/${version}/${o.kind}` : `kubernetes-models/${group ? `${group}/` : ''}${version}/${o.kind}`;
  const loaded = (await import(module)) as Record<string, new (data: unknown) => { validate(): void }>;
  const model = loaded[o.kind];
  assert.ok(model, `no schema for ${o.apiVersion} ${o.kind}`);
  return model;
}

function selects(selector: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

const kubectl = kubectlAvailable();

describe('k8s/ manifests', { skip: kubectl ? false : SKIP_NO_KUBECTL }, () => {
  const rendered = new Map<string, K8sObject[]>();
  const render = (overlay: string) => {
    if (!rendered.has(overlay)) rendered.set(overlay, renderOverlay(overlay));
    return rendered.get(overlay)!;
  };

  for (const overlay of OVERLAYS) {
    it(`overlays/${overlay} renders, and every object validates against its schema`, async () => {
      const objects = render(overlay);
      assert.deepEqual(objects.map((o) => o.kind).sort(), ['ConfigMap', 'Namespace', 'NetworkPolicy', 'NetworkPolicy', 'PodMonitor', 'Service', 'Service', 'StatefulSet', 'StatefulSet']);
      for (const o of objects) {
        const Model = await modelOf(o);
        assert.doesNotThrow(() => new Model(o).validate(), `${o.kind} ${o.metadata.name}`);
        if (o.kind !== 'Namespace') assert.equal(o.metadata.namespace, NAMESPACE, `${o.kind} ${o.metadata.name} in the run's namespace`);
      }
      assert.equal(one(objects, 'Namespace').metadata.name, NAMESPACE);
      // the join token comes from a Secret made outside the manifests, never a literal
      assert.ok(!objects.some((o) => o.kind === 'Secret'));
      assert.doesNotMatch(JSON.stringify(objects), /PRETRAIN_TOKEN"\s*,\s*"value"/);
    });

    it(`overlays/${overlay}: pods are non-root with read-only roots, no service account token, resources, and write only to volumes`, () => {
      const objects = render(overlay);
      for (const component of ['coordinator', 'worker']) {
        const set = statefulSet(objects, component);
        const pod = set.spec.template.spec;
        assert.equal(pod.automountServiceAccountToken, false);
        assert.equal(pod.securityContext.runAsNonRoot, true);
        assert.ok(pod.securityContext.runAsUser > 0);
        assert.equal(pod.securityContext.seccompProfile.type, 'RuntimeDefault');
        assert.ok(selects(set.spec.selector.matchLabels, set.spec.template.metadata.labels));
        assert.ok(selects(RUN_LABEL, set.spec.template.metadata.labels));
        const volumes = new Map<string, K8sObject>(pod.volumes.map((v: K8sObject) => [v.name, v]));
        const claims = new Set((set.spec.volumeClaimTemplates ?? []).map((c: K8sObject) => c.metadata.name));
        assert.equal(pod.containers.length, 1);
        for (const c of pod.containers) {
          assert.equal(c.securityContext.readOnlyRootFilesystem, true);
          assert.equal(c.securityContext.allowPrivilegeEscalation, false);
          assert.deepEqual(c.securityContext.capabilities.drop, ['ALL']);
          assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory, `${component}: requests and a memory limit`);
          assert.ok(c.command[0] in packageBins(), `${component} runs an entry point of the image (${c.command[0]})`);
          assert.ok(!c.args.includes('--resume'), 'a restarted pod continues its run from --run-dir, not --resume');
          // writable mounts: the claim or an emptyDir; the config and the token read-only
          for (const m of c.volumeMounts) {
            const volume = volumes.get(m.name);
            if (claims.has(m.name)) continue;
            assert.ok(volume, `mount ${m.name} has a volume`);
            if (volume.emptyDir) continue;
            assert.equal(m.readOnly, true, `${component}: ${m.mountPath} is read-only`);
            assert.ok(volume.configMap || volume.secret, `${component}: ${m.mountPath}`);
          }
          assert.ok(c.volumeMounts.some((m: K8sObject) => m.mountPath === '/tmp' && volumes.get(m.name)?.emptyDir), `${component}: /tmp is an emptyDir`);
          const token = c.env.find((e: K8sObject) => e.name === 'PRETRAIN_TOKEN_FILE')?.value as string;
          const tokenMount = c.volumeMounts.find((m: K8sObject) => token?.startsWith(`${m.mountPath}/`));
          assert.ok(tokenMount && volumes.get(tokenMount.name)?.secret?.secretName === 'pretrain-token', `${component}: the token file is in the pretrain-token Secret`);
        }
      }
    });

    it(`overlays/${overlay}: gRPC health probes on declared ports; lenient liveness; the metrics port named and annotated`, () => {
      const objects = render(overlay);
      const monitor = one(objects, 'PodMonitor');
      assert.deepEqual(monitor.spec.podMetricsEndpoints.map((e: K8sObject) => e.port), ['metrics']);
      for (const [component, metricsPort] of [['coordinator', 9400], ['worker', 9401]] as const) {
        const set = statefulSet(objects, component);
        const c = set.spec.template.spec.containers[0];
        const ports = new Map<number, string>(c.ports.map((p: K8sObject) => [p.containerPort, p.name]));
        assert.equal(ports.get(metricsPort), 'metrics');
        const annotations = set.spec.template.metadata.annotations;
        assert.deepEqual([annotations['prometheus.io/scrape'], annotations['prometheus.io/port'], annotations['prometheus.io/path']], ['true', String(metricsPort), '/metrics']);
        assert.ok(selects(monitor.spec.selector.matchLabels, set.spec.template.metadata.labels), `the PodMonitor selects the ${component}`);
        assert.equal(c.readinessProbe.grpc.service ?? '', '', `${component}: readiness is the server's status ("")`);
        assert.equal(c.livenessProbe.grpc.service, 'liveness');
        for (const probe of [c.readinessProbe, c.livenessProbe, c.startupProbe].filter(Boolean)) assert.ok(ports.has(probe.grpc.port), `${component}: probe port ${probe.grpc.port} is declared`);
        // a step or a checkpoint write may hold the event loop: 10 minutes without an answer, at least
        const live = c.livenessProbe;
        assert.ok(live.periodSeconds * live.failureThreshold >= 600 && live.timeoutSeconds >= 10, `${component}: lenient liveness`);
      }
    });

    it(`overlays/${overlay}: the coordinator keeps its run on a claim behind a Service; workers have stable names behind a headless Service`, async () => {
      const objects = render(overlay);
      const coordinator = statefulSet(objects, 'coordinator');
      assert.equal(coordinator.spec.replicas, 1);
      const c = coordinator.spec.template.spec.containers[0];
      const arg = (name: string) => c.args[c.args.indexOf(name) + 1] as string;
      const claim = coordinator.spec.volumeClaimTemplates[0];
      const claimMount = c.volumeMounts.find((m: K8sObject) => m.name === claim.metadata.name);
      assert.ok(arg('--run-dir').startsWith(`${claimMount.mountPath}/`), 'the run directory is on the claim');
      assert.equal(arg('--local-workers'), '0');
      assert.match(arg('--listen'), /^0\.0\.0\.0:\d+$/);
      const service = one(objects, 'Service', coordinator.spec.serviceName);
      assert.ok(selects(service.spec.selector, coordinator.spec.template.metadata.labels));

      const workers = statefulSet(objects, 'worker');
      const headless = one(objects, 'Service', workers.spec.serviceName);
      assert.equal(headless.spec.clusterIP, 'None');
      assert.equal(headless.spec.publishNotReadyAddresses, true);
      assert.ok(selects(headless.spec.selector, workers.spec.template.metadata.labels));
      assert.equal(workers.spec.podManagementPolicy, 'Parallel');
      const w = workers.spec.template.spec.containers[0];
      const wArg = (name: string) => w.args[w.args.indexOf(name) + 1] as string;
      assert.equal(wArg('--coordinator'), `${service.metadata.name}:${service.spec.ports.find((p: K8sObject) => p.name === 'control').port}`);
      assert.equal(wArg('--host'), `$(POD_NAME).${headless.metadata.name}.$(POD_NAMESPACE).svc`, 'peers dial the pod by its stable DNS name');
      assert.equal(wArg('--bind'), '0.0.0.0');
      assert.ok(w.ports.some((p: K8sObject) => String(p.containerPort) === wArg('--port') && p.name === 'data'));
      // JSON lines for the log collector, not the terminal's choice
      assert.equal(arg('--log-format'), 'json');
      assert.equal(wArg('--log-format'), 'json');

      // the run file in the ConfigMap is one `coordinator start --config` accepts
      const config = one(objects, 'ConfigMap');
      const configMount = c.volumeMounts.find((m: K8sObject) => coordinator.spec.template.spec.volumes.find((v: K8sObject) => v.name === m.name)?.configMap?.name === config.metadata.name);
      assert.equal(arg('--config'), `${configMount.mountPath}/run.yaml`);
      const dir = await mkdtemp(path.join(tmpdir(), 'k8s-run-file-'));
      try {
        await writeFile(path.join(dir, 'run.yaml'), config.data['run.yaml']);
        const run = await readRunFile(path.join(dir, 'run.yaml'));
        assert.equal(run.workers, workers.spec.replicas, 'the run waits for as many workers as the StatefulSet has');
        assert.ok(run.minWorkers !== undefined && run.minWorkers < run.workers!, 'kubectl scale down: the run goes on with fewer workers');
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });

    it(`overlays/${overlay}: a NetworkPolicy denies by default and lets the run's pods talk to each other`, () => {
      const objects = render(overlay);
      const policies = objects.filter((o) => o.kind === 'NetworkPolicy');
      const denyAll = policies.find((p) => Object.keys(p.spec.podSelector).length === 0);
      assert.ok(denyAll && !denyAll.spec.ingress && !denyAll.spec.egress && denyAll.spec.policyTypes.includes('Ingress') && denyAll.spec.policyTypes.includes('Egress'));
      const run = policies.find((p) => p !== denyAll)!;
      for (const component of ['coordinator', 'worker']) assert.ok(selects(run.spec.podSelector.matchLabels, statefulSet(objects, component).spec.template.metadata.labels));
      assert.deepEqual(run.spec.ingress[0].from, [{ podSelector: { matchLabels: RUN_LABEL } }]);
      assert.deepEqual(run.spec.egress[0].to, [{ podSelector: { matchLabels: RUN_LABEL } }]);
      // the other rules open only DNS (egress) and the metrics ports (ingress)
      assert.deepEqual(run.spec.ingress.slice(1).flatMap((r: K8sObject) => r.ports.map((p: K8sObject) => p.port)), ['metrics']);
      assert.deepEqual(run.spec.egress.slice(1).flatMap((r: K8sObject) => r.ports.map((p: K8sObject) => p.port)), [53, 53]);
    });
  }

  it('the gpu overlay gives each worker one GPU and the tensorflow backend on the gpu image; the cpu overlay wasm on the cpu image', () => {
    for (const overlay of OVERLAYS) {
      const objects = render(overlay);
      const w = statefulSet(objects, 'worker').spec.template.spec.containers[0];
      const backend = w.env.find((e: K8sObject) => e.name === 'PRETRAIN_BACKEND').value;
      assert.ok(w.args.includes('$(PRETRAIN_BACKEND)'));
      for (const component of ['coordinator', 'worker']) assert.equal(statefulSet(objects, component).spec.template.spec.containers[0].image, `tfjs-pretrain:${overlay}`);
      if (overlay === 'gpu') {
        assert.equal(backend, 'tensorflow');
        assert.equal(w.resources.limits['nvidia.com/gpu'], 1);
      } else {
        assert.equal(backend, 'wasm');
        assert.equal(w.resources.limits['nvidia.com/gpu'], undefined);
      }
    }
  });
});
