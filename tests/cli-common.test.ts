import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { PRETRAIN_CLI, runScript } from './helpers.js';

const COORDINATOR_CLI = fileURLToPath(new URL('../coordinator/cli.js', import.meta.url));

describe('every CLI reports errors alike', () => {
  it('a bad number gets the same words whether it is not a number or out of range, prefixed by the program', async () => {
    const cases: [string, string[]][] = [
      [PRETRAIN_CLI, ['prepare', '--corpus', 'c.txt', '--vocab', 'v.txt', '--out', 'o', '--max-length']],
      [COORDINATOR_CLI, ['start', '--local', '--steps']],
    ];
    for (const [cli, args] of cases) {
      const program = cli === PRETRAIN_CLI ? 'pretrain' : 'coordinator';
      for (const value of ['abc', '0', '-3', '2.5']) {
        const r = await runScript(cli, [...args, value]);
        assert.equal(r.code, 2, `${program} ${value}: ${r.stderr}`);
        assert.match(r.stderr, new RegExp(`^${program}: error: option '--[a-z-]+ <n>' argument '${value.replace('.', '\\.')}' is invalid\\. expected a positive integer \\(1, 2, \\.\\.\\.\\), got "${value.replace('.', '\\.')}"\\.\\n$`));
      }
    }
  });

  it('commander\'s own errors and ours share the prefix, one line each', async () => {
    for (const [cli, program] of [[PRETRAIN_CLI, 'pretrain'], [COORDINATOR_CLI, 'coordinator']] as const) {
      const unknown = await runScript(cli, ['no-such-command']);
      assert.equal(unknown.code, 2);
      assert.match(unknown.stderr, new RegExp(`^${program}: error: unknown command 'no-such-command'`));
    }
    const missing = await runScript(PRETRAIN_CLI, ['tokenize', '--vocab', 'no-such-vocab.txt', 'text']);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /^pretrain: error: .*no-such-vocab\.txt.*\n$/);
    assert.doesNotMatch(missing.stderr, /\n\s+at /);
  });
});
