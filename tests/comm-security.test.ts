import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { describe, it } from 'node:test';
import { CollectiveError, Communicator } from '../src/comm/index.js';
import { Encoding, Kind, type Chunk, type PullRequest } from '../src/comm/proto.js';
import { commInput } from './fixtures/comm-data.js';
import { commServers, f32bytes, TOKEN } from './fixtures/comm-inprocess.js';
import { bearer, pullAll, stockClient, stockServer } from './fixtures/grpc-stock.js';

const RUN = 'security-run';

describe('calls that must be refused (a stock grpc-js client as the intruder)', () => {
  it('wrong or missing token, foreign run, stale generation, an impostor rank, a wrong sequence and an oversized request get clear statuses; the collective in progress completes correctly', async (t) => {
    const servers = await commServers(t, 2, RUN);
    const peers = servers.map((s) => s.address);
    const comms = servers.map((s, rank) => new Communicator(s, { generation: 2, rank, peers, chunkElements: 16, deadlineMs: 20_000 }));
    t.after(() => comms.forEach((c) => c.close()));
    const a = commInput(1, 0, 0, 100);
    const b = commInput(1, 1, 0, 100);
    const want = a.map((x, i) => Math.fround(x + b[i]!));
    const first = comms[0]!.allReduce(a); // in progress: rank 1 has not started
    const client = stockClient(servers[0]!.address);
    t.after(() => client.close());
    const good: PullRequest = { runId: RUN, generation: 2, sequence: 1, fromRank: 1, toRank: 0, kind: Kind.ALL_REDUCE, elements: 100, encoding: Encoding.FLOAT32, root: 0, chunkElements: 16 };
    const cases: [string, PullRequest, grpc.Metadata, grpc.status, RegExp][] = [
      ['wrong token', good, bearer('not-the-token-0123456789'), grpc.status.UNAUTHENTICATED, /missing or wrong join token/],
      ['no token', good, new grpc.Metadata(), grpc.status.UNAUTHENTICATED, /missing or wrong join token/],
      ['foreign run id', { ...good, runId: 'another-run' }, bearer(TOKEN), grpc.status.PERMISSION_DENIED, /run id 'another-run' is not this server's run/],
      ['stale generation', { ...good, generation: 1 }, bearer(TOKEN), grpc.status.FAILED_PRECONDITION, /generation 1 is stale .*evicted/],
      ['impostor rank', { ...good, fromRank: 0 }, bearer(TOKEN), grpc.status.PERMISSION_DENIED, /rank 0 is not this rank's right ring neighbour/],
      ['wrong sequence', { ...good, sequence: 1000 }, bearer(TOKEN), grpc.status.FAILED_PRECONDITION, /unexpected collective sequence 1000/],
      ['oversized request', { ...good, runId: 'x'.repeat(20_000) }, bearer(TOKEN), grpc.status.RESOURCE_EXHAUSTED, /over the limit of 16384/],
    ];
    for (const [what, request, metadata, code, message] of cases) {
      const { chunks, error } = await pullAll(client, request, metadata);
      assert.equal(chunks.length, 0, what);
      assert.equal(error?.code, code, `${what}: ${error?.message}`);
      assert.match(error!.details, message, what);
    }
    await new Promise<void>((resolve) => {
      client.Status({ runId: RUN, generation: 2, fromRank: 1 }, bearer('not-the-token-0123456789'), (e) => {
        assert.equal(e?.code, grpc.status.UNAUTHENTICATED);
        resolve();
      });
    });
    await Promise.all([first, comms[1]!.allReduce(b)]);
    assert.deepEqual(a, want);
    assert.deepEqual(b, want);
  });
});

describe('a hostile left neighbour (a stock grpc-js server posing as rank 1)', () => {
  // the first chunk rank 0 is due from rank 1 of 2: segment 1 of 100 elements, in chunks of 16
  const due = (sequence: number, generation: number): Chunk => ({ runId: RUN, generation, sequence, index: 0, offset: 50, encoding: Encoding.FLOAT32, data: f32bytes(new Float32Array(16).fill(1)) });
  const cases: [string, (c: Chunk) => Chunk, RegExp][] = [
    ['foreign run id', (c) => ({ ...c, runId: 'another-run' }), /sent a chunk of run 'another-run'/],
    ['stale generation', (c) => ({ ...c, generation: c.generation - 1 }), /sent a chunk of generation \d+ \(this is \d+\)/],
    ['wrong sequence', (c) => ({ ...c, sequence: 7 }), /sent a chunk of collective #7 during #1/],
    ['out of order', (c) => ({ ...c, index: 1, offset: 66 }), /chunk 1 at 66 where chunk 0 at 50 was due/],
    ['wrong length', (c) => ({ ...c, data: c.data.subarray(0, 60) }), /60 payload bytes where 64 were due/],
    ['oversized message', (c) => ({ ...c, data: new Uint8Array(1 << 16) }), /message of \d+ bytes, over the limit of 320/],
  ];
  it('each bad chunk fails the collective with CollectiveError naming rank 1, and nothing of it is applied', async (t) => {
    const [server] = await commServers(t, 1, RUN);
    let generation = 0;
    let bad: (c: Chunk) => Chunk = (c) => c;
    const fake = await stockServer({
      Pull: (call: grpc.ServerWritableStream<PullRequest, Chunk>) => {
        call.write(bad(due(call.request.sequence, call.request.generation)));
        call.end();
      },
    });
    t.after(() => fake.server.forceShutdown());
    for (const [what, corrupt, message] of cases) {
      bad = corrupt;
      const comm = new Communicator(server!, { generation: ++generation, rank: 0, peers: [server!.address, fake.address], chunkElements: 16, deadlineMs: 10_000, probeMs: 300 });
      const a = commInput(2, 0, 0, 100);
      const before = a.slice();
      await assert.rejects(comm.allReduce(a), (e: unknown) => {
        assert.ok(e instanceof CollectiveError, `${what}: ${String(e)}`);
        assert.equal(e.peer?.rank, 1, `${what}: ${e.message}`);
        assert.equal(e.reason, 'protocol', `${what}: ${e.message}`);
        assert.match(e.message, message, what);
        return true;
      });
      assert.deepEqual(a, before, `${what}: the buffer was changed`);
      comm.close();
    }
  });
});
