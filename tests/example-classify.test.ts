/** The classification demo end to end at a tiny size: it pretrains, fine-tunes with and without FGM, and reports both. */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { runScript } from './helpers.js';

const DEMO = fileURLToPath(new URL('../../examples/classify/run.mjs', import.meta.url));

describe('examples/classify', () => {
  it('builds the source task split by document, pretrains, fine-tunes plain and with FGM, and prints mean and spread; the same-ci task runs too', async () => {
    const out = await mkdtemp(path.join(tmpdir(), 'classify-'));
    try {
      const r = await runScript(DEMO, ['--steps', '4', '--seeds', '1', '--epochs', '1', '--docs', '40', '--preset', 'L1-H32', '--local-workers', '1', '--out', out], { timeout: 240_000 });
      assert.equal(r.code, 0, r.stderr + r.stdout);
      const lines = r.stdout.trimEnd().split('\n');
      assert.match(lines.at(-2)!, /^reproduce: node examples\/classify\/run\.mjs --task source --steps 4 --seeds 1/);
      const figures = JSON.parse(lines.at(-1)!) as { task: string; seeds: number; testExamples: number; plain: { accuracies: number[]; mean: number; std: number }; fgm: { accuracies: number[]; mean: number } };
      assert.equal(figures.seeds, 1);
      assert.ok(figures.testExamples > 0);
      assert.match(figures.task, /Analects or Song ci/);
      for (const m of [figures.plain, figures.fgm]) {
        assert.equal(m.accuracies.length, 1);
        assert.ok(m.mean >= 0 && m.mean <= 1);
      }
      const pairs = await runScript(DEMO, ['--task', 'same-ci', '--steps', '2', '--seeds', '1', '--epochs', '1', '--docs', '30', '--preset', 'L1-H32', '--local-workers', '1', '--out', path.join(out, 'pairs')], { timeout: 240_000 });
      assert.equal(pairs.code, 0, pairs.stderr + pairs.stdout);
      assert.match(pairs.stdout.trimEnd().split('\n').at(-1)!, /"task":"same-ci line pairs"/);
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});
