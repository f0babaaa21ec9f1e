import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { checkpointName, loadLatestCheckpoint, saveRunCheckpoint } from '../src/checkpoint/run-checkpoint.js';
import { OPTIMIZER_STATE_FORMAT } from '../src/optim/optimizer.js';
import { AuditError, auditEntries, auditRun } from '../src/run/audit.js';
import { Journal, JOURNAL_FILE, JOURNAL_FORMAT, type JournalEntry, replayJournal } from '../src/run/journal.js';
import { DataLedger, epochPermutation } from '../src/run/ledger.js';
import { runScript } from './helpers.js';

const COORDINATOR_CLI = fileURLToPath(new URL('../coordinator/cli.js', import.meta.url));

let root: string;
before(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'run-audit-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

const RECORDS = Array.from({ length: 23 }, (_, i) => 500 + i);
const SEED = 11;
const BATCH = 4;

/**
 * A run the way the coordinator will drive these pieces: steps 0-8 with a checkpoint after
 * step 3, a crash after step 8 (its workers gone too), a resume from the checkpoint (steps
 * 4-8 void) and training on to step 15, a little past two epochs (6 steps each).
 */
async function simulatedRun(): Promise<string> {
  const run = await mkdtemp(path.join(root, 'run-'));
  let { journal } = await Journal.open(path.join(run, JOURNAL_FILE));
  await journal.append({ type: 'start', format: JOURNAL_FORMAT, epochSize: RECORDS.length, globalBatch: BATCH, seed: SEED });
  let ledger = new DataLedger({ recordIds: RECORDS, seed: SEED, globalBatch: BATCH });
  const train = async (from: number, to: number) => {
    for (let step = from; step <= to; step++) {
      ledger.next(step);
      if (step === 6) {
        // a worker died mid-step: aborted, retried under the same step number
        ledger.abort(step);
        ledger.next(step);
      }
      await journal.append({ type: 'commit', ...ledger.commit(step) });
    }
  };
  await train(0, 3);
  await saveRunCheckpoint(run, {
    state: { step: 3, generation: 1, ledger: ledger.state(), rng: { seed: SEED }, config: {} },
    params: [{ name: 'w', shape: [2], data: new Float32Array([1, 2]) }],
    optimizer: { format: OPTIMIZER_STATE_FORMAT, components: ['sgd'], iterations: 4, microSteps: 0, slots: [] },
  });
  await journal.append({ type: 'checkpoint', step: 3, dir: checkpointName(3) });
  await train(4, 8);
  await journal.close();

  ({ journal } = await Journal.open(path.join(run, JOURNAL_FILE)));
  const latest = await loadLatestCheckpoint(run);
  assert.ok(latest.checkpoint);
  ledger = DataLedger.fromState(latest.checkpoint.state.ledger, RECORDS);
  await journal.append({ type: 'resume', fromStep: latest.checkpoint.step, checkpoint: latest.checkpoint.name });
  await train(4, 15);
  await journal.close();
  return run;
}

async function entriesOf(run: string): Promise<JournalEntry[]> {
  return (await replayJournal(path.join(run, JOURNAL_FILE))).entries;
}

describe('audit', () => {
  it('counts each record of the final lineage once: commits journaled after the checkpoint a run resumed from are void', async () => {
    const run = await simulatedRun();
    const audit = await auditRun(run);
    assert.equal(audit.ok, true, JSON.stringify(audit, null, 1));
    assert.equal(audit.voidCommits, 5);
    assert.equal(audit.commits, 16);
    assert.deepEqual(audit.resumes, [{ fromStep: 3, checkpoint: 'ckpt-00000003' }]);
    assert.deepEqual(audit.resumedFrom, { checkpoint: 'ckpt-00000003', step: 3, status: 'agrees' });
    assert.deepEqual(
      audit.epochs.map((e) => [e.epoch, e.complete, e.exactlyOnce, e.missing, e.pending, e.repeated]),
      [
        [0, true, 23, 0, 0, 0],
        [1, true, 23, 0, 0, 0],
        [2, false, 16, 0, 7, 0],
      ],
    );
    assert.deepEqual(audit.problems, []);
  });

  it('finds a lost commit (records missing) and a step consumed twice (records repeated), naming the records', async () => {
    const entries = await entriesOf(await simulatedRun());
    const resume = entries.findIndex((e) => e.type === 'resume');
    const lost = entries.findIndex((e, i) => i > resume && e.type === 'commit' && e.step === 4);
    const lostEntry = entries[lost] as Extract<JournalEntry, { type: 'commit' }>;
    const withoutOne = entries.filter((_, i) => i !== lost);
    const audit = auditEntries('j', withoutOne);
    assert.equal(audit.ok, false);
    const perm = epochPermutation(SEED, 0, RECORDS.length);
    const [[s, e]] = lostEntry.positions as [[number, number]];
    assert.deepEqual(audit.epochs[0]!.missingRecords, [...perm.slice(s, e)]);
    assert.equal(audit.epochs[0]!.missing, BATCH);
    assert.equal(audit.epochs[0]!.repeated, 0);

    // the same positions committed again under a later step number
    const twice = [...entries, { ...lostEntry, step: 99 }];
    const repeated = auditEntries('j', twice).epochs[0]!;
    assert.equal(repeated.repeated, BATCH);
    assert.deepEqual(repeated.repeatedRecords, [...perm.slice(s, e)]);
  });

  it('without the resume entry, the void commits count: steps committed twice and records repeated', async () => {
    const entries = (await entriesOf(await simulatedRun())).filter((e) => e.type !== 'resume');
    const audit = auditEntries('j', entries);
    assert.equal(audit.ok, false);
    assert.match(audit.problems[0]!, /step 4 committed after step 8 with no resume between/);
    assert.ok(audit.epochs[0]!.repeated > 0);
  });

  it('flags a checkpoint whose ledger disagrees with the journal, and needs a start entry', async () => {
    const run = await simulatedRun();
    const { journal } = await Journal.open(path.join(run, JOURNAL_FILE));
    // claims to resume from step 15 with the checkpoint of step 3
    await journal.append({ type: 'resume', fromStep: 15, checkpoint: 'ckpt-00000003' });
    await journal.close();
    const audit = await auditRun(run);
    assert.equal(audit.resumedFrom?.status, 'disagrees');
    assert.match(audit.resumedFrom?.problem ?? '', /holds step 3, the journal resumed from step 15/);
    assert.equal(audit.ok, false);
    assert.throws(() => auditEntries('runs/x/journal.tfrecord', [{ type: 'commit', step: 0, epoch: 0, positions: [[0, 4]] }]), (err: unknown) => err instanceof AuditError && /runs\/x\/journal\.tfrecord: the journal does not begin with a start entry/.test(err.message));
  });

  it('coordinator audit prints the report, as JSON with --json, and exits 1 when records are missing or repeated', async () => {
    const run = await simulatedRun();
    const text = await runScript(COORDINATOR_CLI, ['audit', run]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /epoch 0: 23 records, complete: 23 exactly once, 0 missing, 0 repeated/);
    assert.match(text.stdout, /epoch 2: 23 records, in progress: 16 exactly once, 7 pending, 0 repeated/);
    assert.match(text.stdout, /5 void/);
    const json = await runScript(COORDINATOR_CLI, ['audit', run, '--json']);
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual(JSON.parse(json.stdout), JSON.parse(JSON.stringify(await auditRun(run))));

    const { journal } = await Journal.open(path.join(run, JOURNAL_FILE));
    await journal.append({ type: 'commit', step: 16, epoch: 2, positions: [[0, 2]] });
    await journal.close();
    const bad = await runScript(COORDINATOR_CLI, ['audit', run]);
    assert.equal(bad.code, 1);
    assert.match(bad.stdout, /epoch 2: .* 2 repeated/);
    assert.match(bad.stderr, /^coordinator: error: the audit of .* found records missing or repeated/);
    const none = await runScript(COORDINATOR_CLI, ['audit', path.join(root, 'nothing')]);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /^coordinator: error: .*nothing\/journal\.tfrecord: no journal there/);
  });
});
