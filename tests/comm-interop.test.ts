import assert from 'node:assert/strict';
import type * as grpc from '@grpc/grpc-js';
import { describe, it } from 'node:test';
import { Communicator } from '../src/comm/index.js';
import { Encoding, Kind, type Chunk, type PullRequest } from '../src/comm/proto.js';
import { commInput } from './fixtures/comm-data.js';
import { commServers, f32bytes, TOKEN } from './fixtures/comm-inprocess.js';
import { bearer, stockClient, stockServer } from './fixtures/grpc-stock.js';

const RUN = 'interop-run';

describe('interoperability with stock @grpc/grpc-js', () => {
  it('a grpc-js rank (its client pulling from our server, its server serving our client) completes a 2-rank all-reduce with ours', async (t) => {
    const [server] = await commServers(t, 1, RUN);
    const L = 100; // two segments of 50, one chunk each
    const a = commInput(3, 0, 0, L);
    const b = commInput(3, 1, 0, L);
    const want = a.map((x, i) => Math.fround(x + b[i]!));
    const f32 = (data: Uint8Array): Float32Array => new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));

    // rank 1 in grpc-js: reduce-scatter sends its segment 1 and adds our segment 0; all-gather sends the reduced segment 0
    let reducedSegment0: (chunk: Float32Array) => void = () => {};
    const segment0 = new Promise<Float32Array>((resolve) => (reducedSegment0 = resolve));
    const seen: { authorization?: string; request?: PullRequest } = {};
    const fake = await stockServer({
      Pull: async (call: grpc.ServerWritableStream<PullRequest, Chunk>) => {
        seen.authorization = String(call.metadata.get('authorization')[0]);
        seen.request = call.request;
        const header = { runId: RUN, generation: 1, sequence: 1, encoding: Encoding.FLOAT32 };
        call.write({ ...header, index: 0, offset: 50, data: f32bytes(b.subarray(50)) });
        call.write({ ...header, index: 1, offset: 0, data: f32bytes(await segment0) });
        call.end();
      },
    });
    t.after(() => fake.server.forceShutdown());
    const comm = new Communicator(server!, { generation: 1, rank: 0, peers: [server!.address, fake.address], chunkElements: 64, deadlineMs: 10_000 });
    t.after(() => comm.close());
    const client = stockClient(server!.address);
    t.after(() => client.close());

    const ours = comm.allReduce(a);
    const request: PullRequest = { runId: RUN, generation: 1, sequence: 1, fromRank: 1, toRank: 0, kind: Kind.ALL_REDUCE, elements: L, encoding: Encoding.FLOAT32, root: 0, chunkElements: 64 };
    const theirs = new Promise<void>((resolve, reject) => {
      const call = client.Pull(request, bearer(TOKEN));
      const got: Chunk[] = [];
      call.on('data', (c: Chunk) => {
        got.push(c);
        if (got.length === 1) {
          assert.deepEqual([c.index, c.offset, c.sequence, c.generation, c.runId], [0, 0, 1, 1, RUN]);
          const sum = f32(c.data).map((x, i) => x + b[i]!);
          b.set(sum, 0);
          reducedSegment0(sum);
        } else {
          assert.deepEqual([c.index, c.offset], [1, 50]);
          b.set(f32(c.data), 50);
        }
      });
      call.on('error', reject);
      call.on('end', () => (got.length === 2 ? resolve() : reject(new Error(`${got.length} chunks`))));
    });
    await Promise.all([ours, theirs]);
    assert.deepEqual(a, want, 'our rank');
    assert.deepEqual(b, want, 'the grpc-js rank');
    assert.equal(seen.authorization, `Bearer ${TOKEN}`);
    assert.deepEqual(seen.request, { ...request, fromRank: 0, toRank: 1 });

    const status = await new Promise((resolve, reject) => client.Status({ runId: RUN, generation: 1, fromRank: 1 }, bearer(TOKEN), (e, r) => (e ? reject(e) : resolve(r))));
    assert.deepEqual(status, { runId: RUN, generation: 1, rank: 0, sequence: 1, active: false });
  });
});
