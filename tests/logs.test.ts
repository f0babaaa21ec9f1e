/**
 * The log of the coordinator and the workers (src/log/logger.ts): the format chosen by
 * --log-format / PRETRAIN_LOG_FORMAT / the terminal, JSON lines with the run's context and
 * each line's numbers, the human lines unchanged in text, and no secret in either: a real
 * 2-worker run under mutual TLS with a known token, once per format, whose whole output holds
 * neither the token nor any line of the TLS key.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { Logger, LogConfigError, pemSecrets, REDACTED, resolveLogFormat } from '../src/log/logger.js';
import { METRICS_TARGETS_FILE, parseMetricsAnnouncement } from '../src/metrics/metrics.js';
import { makePki, type Pki } from './fixtures/pki.js';
import { prepareRunData, runScript } from './helpers.js';
import { jsonLines, type LogRecord } from './log-lines.js';

const CLI = fileURLToPath(new URL('../coordinator/cli.js', import.meta.url));

let dir: string;
let data: string;
let pki: Pki;

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'logs-'));
  data = (await prepareRunData(dir)).mlm;
  pki = makePki(dir, 'logs');
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A logger writing its JSON lines to a file, and its text lines to a string. */
function fileLogger(format: 'text' | 'json', name: string): { logger: Logger; records(): LogRecord[]; text(): string; close(): void } {
  const file = path.join(dir, `${name}.jsonl`);
  const fd = openSync(file, 'w');
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (d: Buffer) => (text += d.toString()));
  const logger = new Logger({ format, name: 'coordinator', textStream: stream, fd });
  return { logger, records: () => jsonLines(readFileSync(file, 'utf8')), text: () => text, close: () => closeSync(fd) };
}

describe('the log format', () => {
  it('--log-format wins over PRETRAIN_LOG_FORMAT, which wins over auto; auto is text on a terminal, else json; anything else is refused', () => {
    assert.equal(resolveLogFormat('json', { PRETRAIN_LOG_FORMAT: 'text' }, true), 'json');
    assert.equal(resolveLogFormat('text', {}, false), 'text');
    assert.equal(resolveLogFormat(undefined, { PRETRAIN_LOG_FORMAT: 'text' }, false), 'text');
    assert.equal(resolveLogFormat(undefined, { PRETRAIN_LOG_FORMAT: 'json' }, true), 'json');
    assert.equal(resolveLogFormat(undefined, {}, true), 'text');
    assert.equal(resolveLogFormat(undefined, {}, false), 'json');
    assert.equal(resolveLogFormat('auto', { PRETRAIN_LOG_FORMAT: 'text' }, false), 'json');
    assert.equal(resolveLogFormat(undefined, { PRETRAIN_LOG_FORMAT: '' }, true), 'text');
    assert.throws(() => resolveLogFormat(undefined, { PRETRAIN_LOG_FORMAT: 'yaml' }, true), (e: Error) => e instanceof LogConfigError && /PRETRAIN_LOG_FORMAT=yaml is not a log format: choose auto, text, json/.test(e.message));
  });

  it('JSON lines: time, level, msg, name, the context and the line\'s fields (a line\'s own win); a local worker\'s JSON line passes with localWorker, any other line becomes msg', () => {
    const { logger, records, close } = fileLogger('json', 'unit');
    let step = 4;
    logger.setContext(() => ({ runId: 'run-1', generation: 2, step }));
    logger.info('checkpoint: step 4', { bytes: 10 });
    step = 5;
    logger.log('step 7 aborted', { step: 7, reason: 'gone' }, 'warn');
    logger.forward(1, JSON.stringify({ level: 'info', time: 'then', msg: 'worker 3: generation 2, rank 1 of 2', rank: 1, generation: 2 }));
    logger.forward(0, 'Error: something of a library', 'warn');
    logger.reportError('coordinator', 'the run stopped', new TypeError('x'), false);
    close();
    const [first, second, forwarded, plain, error] = records();
    assert.equal(records().length, 5);
    assert.match(first!.time as string, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.deepEqual({ ...first, time: undefined, pid: undefined, hostname: undefined }, { level: 'info', time: undefined, pid: undefined, hostname: undefined, name: 'coordinator', runId: 'run-1', generation: 2, step: 4, bytes: 10, msg: 'checkpoint: step 4' });
    assert.equal(second!.level, 'warn');
    assert.equal(second!.step, 7, "the line's own step wins over the context's");
    assert.equal(second!.reason, 'gone');
    assert.deepEqual(forwarded, { level: 'info', time: 'then', msg: 'worker 3: generation 2, rank 1 of 2', rank: 1, generation: 2, localWorker: 1 });
    assert.equal(plain!.msg, 'Error: something of a library');
    assert.equal(plain!.localWorker, 0);
    assert.equal(plain!.level, 'warn');
    assert.equal(plain!.runId, 'run-1');
    assert.equal(error!.level, 'error');
    assert.equal(error!.msg, 'the run stopped');
    assert.equal(error!.error, 'TypeError');
  });

  it('text lines are the human lines; a local worker\'s get the [worker i] prefix', () => {
    const { logger, text, close } = fileLogger('text', 'unit-text');
    logger.setContext(() => ({ runId: 'run-1' }));
    logger.info('step 1/3  epoch 0', { step: 1, loss: 2 });
    logger.forward(1, 'worker 2: generation 1, rank 1 of 2');
    close();
    assert.equal(text(), 'step 1/3  epoch 0\n  [worker 1] worker 2: generation 1, rank 1 of 2\n');
  });

  it('a redacted secret never appears, in either format, in a message, a field or a forwarded line', () => {
    const secret = randomBytes(32).toString('hex');
    const key = readFileSync(pki.key, 'utf8');
    for (const format of ['json', 'text'] as const) {
      const { logger, records, text, close } = fileLogger(format, `redact-${format}`);
      logger.redact(secret, ...pemSecrets(key));
      logger.info(`the token is ${secret}`, { token: secret });
      logger.info(`the key:\n${key}`);
      logger.forward(0, JSON.stringify({ msg: `Bearer ${secret}` }));
      logger.forward(1, `Bearer ${secret}`);
      close();
      const out = format === 'json' ? readFileSync(path.join(dir, `redact-${format}.jsonl`), 'utf8') : text();
      assert.ok(!out.includes(secret), out);
      for (const line of pemSecrets(key)) assert.ok(!out.includes(line), out);
      assert.ok(out.includes(REDACTED));
      if (format === 'json') assert.equal(records().length, 4);
    }
  });

  it('a secret with characters JSON escapes is redacted in a JSON line too', () => {
    const { logger, close } = fileLogger('json', 'redact-escaped');
    const secret = 'to"ken\\with-escapes';
    logger.redact(secret);
    logger.info(`the token is ${secret}`, { token: secret });
    close();
    const out = readFileSync(path.join(dir, 'redact-escaped.jsonl'), 'utf8');
    assert.ok(!out.includes(JSON.stringify(secret).slice(1, -1)), out);
    assert.equal(jsonLines(out)[0]!.msg, `the token is ${REDACTED}`);
  });

  it('a metrics announcement is found in a JSON line too', () => {
    assert.equal(parseMetricsAnnouncement('worker: metrics on http://127.0.0.1:9401/metrics'), '127.0.0.1:9401');
    assert.equal(parseMetricsAnnouncement(JSON.stringify({ level: 'info', msg: 'worker: metrics on http://127.0.0.1:9401/metrics' })), '127.0.0.1:9401');
    assert.equal(parseMetricsAnnouncement(JSON.stringify({ level: 'info', msg: 'worker: stopped' })), undefined);
  });
});

describe('the log of a real run', () => {
  const token = randomBytes(32).toString('hex');
  const secrets = (): string[] => [token, ...pemSecrets(readFileSync(pki.key, 'utf8'))];
  const run = (format: 'json' | 'text', extra: string[] = []) =>
    runScript(
      CLI,
      ['start', '--log-format', format, '--run-dir', path.join(dir, `run-${format}`), '--data', data, '--local-workers', '2', '--backend', 'cpu', '--preset', 'L1-H32', '--steps', '3', '--global-batch', '4', '--log-every', '1', '--checkpoint-every', '3',
        '--tls-ca', pki.ca, '--tls-cert', pki.cert, '--tls-key', pki.key, '--metrics-port', '0', ...extra],
      { timeout: 120_000, env: { PRETRAIN_TOKEN: token } },
    );

  it('json: every stdout line a JSON object with time, level, msg, the run id, generation and step (and a worker\'s rank), progress numbers as fields; no token or key anywhere', { timeout: 150_000 }, async () => {
    const r = await run('json');
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const lines = r.stdout.split('\n').filter((l) => l !== '');
    const records = jsonLines(r.stdout);
    assert.equal(records.length, lines.length, `not every stdout line is JSON:\n${r.stdout}`);
    for (const rec of records) {
      assert.match(String(rec.time), /^\d{4}-\d\d-\d\dT/, JSON.stringify(rec));
      assert.ok(['info', 'warn', 'error'].includes(rec.level as string), JSON.stringify(rec));
      assert.equal(typeof rec.msg, 'string', JSON.stringify(rec));
    }
    const coordinator = records.filter((rec) => rec.name === 'coordinator');
    for (const rec of coordinator) {
      assert.equal(rec.runId, 'run-json', JSON.stringify(rec));
      // all but the metrics announcement, which comes before the coordinator knows its generation
      if (!/^coordinator: metrics on/.test(rec.msg as string)) {
        assert.equal(typeof rec.generation, 'number', JSON.stringify(rec));
        assert.equal(typeof rec.step, 'number', JSON.stringify(rec));
      }
    }
    // the local workers' lines, forwarded: their own context from the join on, their rank from the assignment on
    for (const i of [0, 1]) {
      const own = records.filter((rec) => rec.localWorker === i && rec.name === 'worker');
      const joined = own.findIndex((rec) => /^worker \d+: joined run run-json/.test(rec.msg as string));
      assert.ok(joined >= 0, r.stdout);
      // which backend it computes on; the fused multiply-adds are wasm's alone
      assert.equal(own[joined]!.backend, 'cpu', JSON.stringify(own[joined]));
      assert.ok(!('fusedMultiplyAdd' in own[joined]!), JSON.stringify(own[joined]));
      for (const rec of own.slice(joined)) {
        assert.equal(rec.runId, 'run-json', JSON.stringify(rec));
        assert.equal(typeof rec.workerId, 'number', JSON.stringify(rec));
        assert.equal(typeof rec.generation, 'number', JSON.stringify(rec));
        assert.equal(typeof rec.step, 'number', JSON.stringify(rec));
      }
      const assigned = own.find((rec) => /^worker \d+: generation 1, rank \d of 2$/.test(rec.msg as string));
      assert.ok(assigned && typeof assigned.rank === 'number' && assigned.worldSize === 2, JSON.stringify(assigned));
      assert.equal(own.at(-1)!.msg, 'worker: stopped: the run is complete');
      assert.equal(own.at(-1)!.step, 3);
      assert.equal(typeof own.at(-1)!.rank, 'number');
    }
    // the progress lines carry their numbers; the closing line its summary
    const progress = coordinator.filter((rec) => /^step \d\/3 /.test(rec.msg as string));
    assert.deepEqual(progress.map((rec) => rec.step), [1, 2, 3]);
    for (const rec of progress) {
      for (const field of ['loss', 'gradNorm', 'learningRate', 'tokensPerSecond', 'etaSeconds', 'epoch']) assert.equal(typeof rec[field], 'number', `${field}: ${JSON.stringify(rec)}`);
      assert.equal(rec.workers, 2);
      assert.equal(rec.generation, 1);
      assert.match(rec.msg as string, new RegExp(`loss ${(rec.loss as number).toFixed(4)} `));
    }
    const done = coordinator.find((rec) => /^done: steps 1-3 /.test(rec.msg as string));
    assert.ok(done && done.lastStep === 3 && done.stoppedEarly === false, r.stdout);
    assert.ok(coordinator.some((rec) => /^checkpoint: step 3 /.test(rec.msg as string) && typeof rec.bytes === 'number'));
    // the workers' metrics announcements, read from their JSON lines, made the targets file
    const targets = JSON.parse(readFileSync(path.join(dir, 'run-json', METRICS_TARGETS_FILE), 'utf8')) as unknown[];
    assert.equal(targets.length, 3);
    const all = r.stdout + r.stderr;
    for (const s of secrets()) assert.ok(!all.includes(s), `a secret in the log: ${s.slice(0, 8)}...`);
  });

  it('text: the human lines, as before; no token or key anywhere', { timeout: 150_000 }, async () => {
    const r = await run('text');
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /^step 3\/3 {2}epoch 0 {2}loss \d+\.\d{4} {2}grad-norm /m);
    assert.match(r.stdout, /^ {2}\[worker [01]\] worker \d+: generation 1, rank [01] of 2$/m);
    assert.match(r.stdout, /^done: steps 1-3 /m);
    assert.match(r.stderr, /^coordinator: metrics on http:\/\//m);
    assert.doesNotMatch(r.stdout + r.stderr, /^\{/m);
    assert.ok(existsSync(path.join(dir, 'run-text', METRICS_TARGETS_FILE)));
    const all = r.stdout + r.stderr;
    for (const s of secrets()) assert.ok(!all.includes(s), `a secret in the log: ${s.slice(0, 8)}...`);
  });

  it('json: the closing error is a JSON line of level error on stdout, nothing on stderr', async () => {
    const r = await runScript(CLI, ['start', '--log-format', 'json', '--run-dir', path.join(dir, 'run-none'), '--data', path.join(dir, 'no-such-data')], { timeout: 60_000 });
    assert.equal(r.code, 2, r.stderr + r.stdout);
    assert.equal(r.stderr, '');
    const records = jsonLines(r.stdout);
    assert.equal(records.length, r.stdout.trim().split('\n').length, r.stdout);
    const error = records.at(-1)!;
    assert.equal(error.level, 'error');
    assert.equal(error.name, 'coordinator');
    assert.match(error.msg as string, /no-such-data/);
  });
});
