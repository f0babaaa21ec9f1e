/** The question-answering demo end to end at a tiny size: it runs, and under the prefix tree every answer is a knowledge-base entry. */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { runScript } from './helpers.js';

const DEMO = fileURLToPath(new URL('../../examples/kbqa/run.mjs', import.meta.url));

describe('examples/kbqa', () => {
  it('trains, builds the tree, decodes held-out questions with and without it, and reports; constrained answers are all KB entries', async () => {
    const out = await mkdtemp(path.join(tmpdir(), 'kbqa-'));
    try {
      const r = await runScript(DEMO, ['--steps', '8', '--limit', '24', '--local-workers', '1', '--out', out], { timeout: 240_000 });
      assert.equal(r.code, 0, r.stderr + r.stdout);
      const lines = r.stdout.trimEnd().split('\n');
      assert.match(lines.at(-2)!, /^reproduce: node examples\/kbqa\/run\.mjs --steps 8/);
      const figures = JSON.parse(lines.at(-1)!) as Record<string, number>;
      assert.equal(figures['questions'], 24);
      assert.equal(figures['constrainedKbEntryShare'], 1, 'every answer under the tree is a key of the knowledge base');
      for (const key of ['constrainedAccuracy', 'unconstrainedAccuracy', 'unconstrainedKbEntryShare']) assert.ok(figures[key]! >= 0 && figures[key]! <= 1, key);
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});
