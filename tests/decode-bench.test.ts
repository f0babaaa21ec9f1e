import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { runScript } from './helpers.js';

const BENCH = fileURLToPath(new URL('../bench/decode.js', import.meta.url));

describe('bench:decode', () => {
  it('prints its table and ends with one JSON line of the named figures (tiny sizes)', async () => {
    const r = await runScript(BENCH, ['--preset', 'L1-H32', '--vocab', '300', '--source', '16', '--generate', '6', '--batch', '2', '--beam', '2', '--repeats', '1', '--trie-keys', '2000', '--constraint-keys', '500'], { timeout: 60_000 });
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(r.stdout, /Beam search, L1-H32 unilm on wasm: 2 inputs x beam 2/);
    assert.match(lines.at(-2)!, /^reproduce: npm run bench:decode -- --preset L1-H32/);
    const figures = JSON.parse(lines.at(-1)!) as Record<string, unknown>;
    for (const key of ['kvCacheTokensPerSec', 'fullRecomputeTokensPerSec', 'kvCacheSpeedup']) assert.ok((figures[key] as number) > 0, key);
    assert.equal(figures['sameOutputs'], true);
    for (const key of ['trieBytesPerKey', 'trieBuildKeysPerSec', 'trieLoadMs', 'constrainedTokensPerSec']) assert.ok((figures[key] as number) > 0, key);
    assert.match(r.stdout, /beam search under a prefix tree of 500 random keys: .* every output a key: yes/);
  });
});
