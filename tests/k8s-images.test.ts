/**
 * The container images (docker/cpu.Dockerfile, docker/gpu.Dockerfile). No Docker engine here,
 * so what can be checked without one: the files the images copy exist (and the build
 * context keeps them), the entry points they put on PATH are the package's bins and exist
 * in the built dist, the build stage has what `npm run build` compiles, the runtime installs
 * with --omit=dev, and the gpu image has the CUDA/cuDNN that tfjs-node-gpu 4.22 needs and the
 * allowScripts approval of its install script.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { packageBins, REPO } from './k8s-support.js';

interface Instruction {
  readonly op: string;
  readonly args: string;
  readonly stage: number;
}

/** Instructions, with line continuations joined and comments dropped; `stage` counts FROMs. */
function parseDockerfile(file: string): Instruction[] {
  const text = readFileSync(path.join(REPO, file), 'utf8').split('\n').filter((l) => !/^\s*#/.test(l)).join('\n').replace(/\\\n/g, ' ');
  let stage = -1;
  return text.split('\n').filter((l) => l.trim()).map((l) => {
    const m = /^\s*(\w+)\s+(.*)$/.exec(l)!;
    const op = m[1]!.toUpperCase();
    if (op === 'FROM') stage++;
    return { op, args: m[2]!.trim(), stage };
  });
}

/** Whether .dockerignore keeps `file` out of the build context (its patterns as this repository uses them). */
function ignored(file: string): boolean {
  const patterns = readFileSync(path.join(REPO, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  let out = false;
  for (const raw of patterns) {
    const negate = raw.startsWith('!');
    const p = raw.replace(/^!/, '').replace(/^\//, '').replace(/\/$/, '');
    const hit = p.endsWith('/*') ? file.startsWith(`${p.slice(0, -1)}`) : file === p || file.startsWith(`${p}/`) || (p.startsWith('*') && file.endsWith(p.slice(1)));
    if (hit) out = !negate;
  }
  return out;
}

const pkg = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { peerDependencies: Record<string, string>; allowScripts: Record<string, boolean> };
const tsconfig = JSON.parse(readFileSync(path.join(REPO, 'tsconfig.json'), 'utf8')) as { include: string[] };

for (const flavour of ['cpu', 'gpu'] as const) {
  const file = `docker/${flavour}.Dockerfile`;
  describe(file, () => {
    const steps = parseDockerfile(file);
    const runtime = Math.max(...steps.map((s) => s.stage));
    const args = new Map(steps.filter((s) => s.op === 'ARG' && s.args.includes('=')).map((s) => s.args.split('=') as [string, string]));

    it('builds on Node 20: a build stage with the dev dependencies runs npm run build, the runtime installs with --omit=dev', () => {
      assert.match(args.get('NODE_IMAGE') ?? '', /^node:20[.-]/);
      const runs = steps.filter((s) => s.op === 'RUN');
      const build = runs.find((s) => /\bnpm run build\b/.test(s.args));
      assert.ok(build, 'npm run build');
      assert.ok(runs.some((s) => s.stage === build.stage && /\bnpm ci\b/.test(s.args) && !/--omit=dev/.test(s.args)), 'the build stage installs the dev dependencies (tsc, assemblyscript)');
      assert.ok(runs.some((s) => s.stage !== build.stage && /\bnpm ci --omit=dev\b/.test(s.args)), 'the runtime\'s node_modules: npm ci --omit=dev');
      // what `npm run build` compiles (tsconfig include) and runs (scripts/) is in the build stage
      const copied = steps.filter((s) => s.stage === build.stage && s.op === 'COPY').flatMap((s) => s.args.split(/\s+/).slice(0, -1));
      for (const dir of [...tsconfig.include, 'scripts', 'proto', 'package.json', 'package-lock.json', 'tsconfig.json']) assert.ok(copied.includes(dir), `the build stage copies ${dir}`);
    });

    it('copies only files that exist and that the build context keeps; from the build, only dist that exists', () => {
      for (const s of steps.filter((x) => x.op === 'COPY')) {
        const parts = s.args.split(/\s+/);
        const from = parts.find((p) => p.startsWith('--from='));
        const sources = parts.filter((p) => !p.startsWith('--')).slice(0, -1);
        for (const src of sources) {
          if (!from) {
            assert.ok(existsSync(path.join(REPO, src)), `${file}: COPY ${src} exists`);
            assert.ok(!ignored(src), `${file}: .dockerignore keeps ${src}`);
          } else if (src.startsWith('/src/dist/')) {
            assert.ok(existsSync(path.join(REPO, src.slice('/src/'.length))), `${file}: ${src} is built (npm run build)`);
          }
        }
      }
      // what the code reads at run time, next to dist/ as in the repository
      const runtimeCopies = steps.filter((s) => s.stage === runtime && s.op === 'COPY').map((s) => s.args);
      for (const need of ['proto proto', 'data/sample data/sample', 'package.json ./', '/src/dist/src dist/src', '/src/dist/coordinator dist/coordinator', '/src/dist/worker dist/worker']) {
        assert.ok(runtimeCopies.some((a) => a.endsWith(need)), `the runtime image copies ${need}`);
      }
      for (const built of ['dist/src/backend/simd/kernels.wasm', 'dist/src/backend/simd/kernels-fma.wasm', 'dist/src/worker/heartbeat-thread.js', 'dist/src/data/prepare-worker.js']) assert.ok(existsSync(path.join(REPO, built)), built);
      assert.equal(steps.find((s) => s.stage === runtime && s.op === 'WORKDIR')?.args, '/app');
    });

    it('puts the package\'s bins on PATH (what k8s/ runs), as a non-root user', () => {
      const bins = packageBins();
      const links = new Map<string, string>();
      for (const s of steps.filter((x) => x.stage === runtime && x.op === 'RUN')) {
        for (const m of s.args.matchAll(/ln -s \/app\/(\S+) \/usr\/local\/bin\/(\S+)/g)) links.set(m[2]!, m[1]!);
      }
      assert.deepEqual(Object.fromEntries(links), bins, 'every bin linked to its file');
      for (const target of Object.values(bins)) {
        assert.match(readFileSync(path.join(REPO, target), 'utf8'), /^#!\/usr\/bin\/env node\n/, `${target} runs by itself`);
        assert.ok(steps.some((s) => s.stage === runtime && s.op === 'RUN' && s.args.includes('chmod') && s.args.includes(target)), `${target} made executable`);
      }
      assert.equal(steps.filter((s) => s.stage === runtime && s.op === 'USER').at(-1)?.args, '1000:1000', 'the uid k8s/ runs as');
    });

    if (flavour === 'gpu') {
      it('runs tfjs-node-gpu 4.22 on CUDA 11.2 and cuDNN 8 (libtensorflow 2.9.1), its install script approved in allowScripts', () => {
        const version = pkg.peerDependencies['@tensorflow/tfjs-node-gpu'];
        assert.equal(version, '4.22.0');
        assert.match(args.get('CUDA_IMAGE') ?? '', /^nvidia\/cuda:11\.2\.\d+-cudnn8-runtime-/);
        assert.equal(steps.filter((s) => s.op === 'FROM').at(-1)?.args, '${CUDA_IMAGE}');
        assert.ok(steps.some((s) => s.op === 'RUN' && s.args.includes(`@tensorflow/tfjs-node-gpu@${version}`)), 'installs the peer dependency\'s version');
        assert.equal(pkg.allowScripts[`@tensorflow/tfjs-node-gpu@${version}`], true);
      });
    }
  });
}
