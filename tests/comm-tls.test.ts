import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { after, before, describe, it } from 'node:test';
import { fromBase64 } from './fixtures/comm-data.js';
import { startRanks } from './fixtures/comm-launch.js';
import { bearer, stockClient } from './fixtures/grpc-stock.js';
import { TOKEN } from './fixtures/comm-inprocess.js';
import { makePki } from './fixtures/pki.js';

let dir: string;

let run: { ca: string; cert: string; key: string };
let rogue: { ca: string; cert: string; key: string };

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'comm-tls-'));
  run = makePki(dir, 'run');
  rogue = makePki(dir, 'rogue');
});
after(() => rmSync(dir, { recursive: true, force: true }));

describe('mutual TLS', () => {
  it('ranks with certificates of the run CA all-reduce over TLS; a client without a certificate cannot connect', async (t) => {
    const group = await startRanks(t, 2, { runId: 'tls-run', generation: 1, chunkElements: 16, deadlineMs: 20_000, tls: run, steps: [{ op: 'allReduce', seed: 1, lengths: [40], reduce: 'sum' }] });
    const [r0, r1] = await Promise.all([group.next(0, 30_000), group.next(1, 30_000)]);
    assert.equal(r0.event, 'result', JSON.stringify(r0));
    assert.deepEqual(r0.data, r1!.data);
    assert.equal(fromBase64((r0.data as string[])[0]!).length, 40);
    // a stock client that trusts the CA but has no certificate of its own
    const client = stockClient(String(group.announcements[0]!.address), grpc.credentials.createSsl(readFileSync(run.ca)));
    t.after(() => client.close());
    const error = await new Promise<grpc.ServiceError | null>((resolve) => client.Status({ runId: 'tls-run', generation: 1, fromRank: 1 }, bearer(TOKEN), (e) => resolve(e)));
    assert.equal(error?.code, grpc.status.UNAVAILABLE, String(error?.message));
  });

  it('a rank whose certificate another CA signed cannot connect: the run rank fails naming it', async (t) => {
    const group = await startRanks(t, 2, { runId: 'tls-run', generation: 1, chunkElements: 16, deadlineMs: 6000, probeMs: 1000, tls: run, steps: [{ op: 'allReduce', seed: 1, lengths: [40], reduce: 'sum' }] }, (rank) =>
      rank === 1 ? { COMM_TLS: JSON.stringify({ ...rogue, ca: run.ca }) } : {},
    );
    const [r0, r1] = await Promise.all([group.next(0, 30_000), group.next(1, 30_000)]);
    assert.equal(r0.name, 'CollectiveError', JSON.stringify(r0));
    assert.equal(r0.peerRank, 1, String(r0.message));
    assert.equal(r0.reason, 'unreachable', String(r0.message));
    assert.equal(r1!.name, 'CollectiveError', JSON.stringify(r1));
    assert.match(String(r0.message), /unable to verify the first certificate.*signed by the run's CA/);
  });
});
