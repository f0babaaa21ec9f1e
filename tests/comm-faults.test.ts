import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import type { RankGroup, Message } from '../src/comm/local-launch.js';
import { CollectiveError, Communicator } from '../src/comm/index.js';
import { commServers } from './fixtures/comm-inprocess.js';
import { startRanks } from './fixtures/comm-launch.js';

const DEADLINE_MS = 4000;
// timers fire late on a loaded 2-core machine; the bound is the deadline, not a speed figure
const SLACK_MS = 2000;

/** Waits until `rank` has finished `count` collectives of its loop. */
async function waitIterations(group: RankGroup, rank: number, count: number): Promise<void> {
  for (;;) {
    const m = await group.next(rank, 20_000);
    if (m.event === 'iteration' && (m.i as number) + 1 >= count) return;
    assert.notEqual(m.event, 'error', `rank ${rank} failed before the fault: ${JSON.stringify(m)}`);
  }
}

/** The error a rank reports next, skipping its progress reports (bounded). */
async function nextError(group: RankGroup, rank: number): Promise<Message> {
  const until = Date.now() + DEADLINE_MS + 15_000;
  for (;;) {
    const m = await group.next(rank, Math.max(1, until - Date.now()));
    if (m.event === 'error') return m;
    assert.equal(m.event, 'iteration', JSON.stringify(m));
  }
}

async function ringInLoop(t: TestContext, n: number): Promise<RankGroup> {
  const group = await startRanks(t, n, {
    runId: 'fault-test',
    generation: 1,
    chunkElements: 4096,
    deadlineMs: DEADLINE_MS,
    probeMs: 1500, // a loaded machine must not make a live rank look stopped
    steps: [{ op: 'loop', length: 1 << 17, iterations: 1_000_000 }],
  });
  for (let r = 0; r < n; r++) await waitIterations(group, r, 2);
  return group;
}

describe('a peer that dies or stops mid-collective', () => {
  it('SIGKILL: every other rank gets CollectiveError naming it within the deadline', async (t) => {
    const group = await ringInLoop(t, 3);
    group.signal(1, 'SIGKILL');
    for (const r of [0, 2]) {
      const e = await nextError(group, r);
      assert.equal(e.name, 'CollectiveError', JSON.stringify(e));
      assert.equal(e.peerRank, 1, `rank ${r} blamed rank ${e.peerRank}: ${e.message}`);
      assert.equal(e.reason, 'unreachable', String(e.message));
      assert.match(String(e.message), /rank 1 \(127\.0\.0\.1:\d+\) is unreachable/);
      assert.ok((e.elapsedMs as number) <= DEADLINE_MS + SLACK_MS, `rank ${r} took ${e.elapsedMs} ms`);
    }
  });

  it('SIGSTOP: every other rank gets CollectiveError naming the stopped rank within the deadline', async (t) => {
    const group = await ringInLoop(t, 4);
    group.signal(2, 'SIGSTOP');
    for (const r of [0, 1, 3]) {
      const e = await nextError(group, r);
      assert.equal(e.name, 'CollectiveError', JSON.stringify(e));
      assert.equal(e.peerRank, 2, `rank ${r} blamed rank ${e.peerRank}: ${e.message}`);
      assert.equal(e.reason, 'unresponsive', String(e.message));
      assert.ok((e.elapsedMs as number) <= DEADLINE_MS + SLACK_MS, `rank ${r} took ${e.elapsedMs} ms`);
    }
    group.signal(2, 'SIGCONT');
  });
});

describe('reduce-scatter and all-gather over chosen segments', () => {
  it('segment bounds that do not split the buffer among the ranks are refused before anything is sent, naming what to give', async (t) => {
    const servers = await commServers(t, 2, 'bounds-run');
    const peers = servers.map((s) => s.address);
    const comms = servers.map((s, rank) => new Communicator(s, { generation: 1, rank, peers, chunkElements: 16, deadlineMs: 30_000 }));
    t.after(() => comms.forEach((c) => c.close()));
    const buffer = new Float32Array(10);
    for (const bounds of [[0, 10], [0, 5, 9], [0, 6, 5, 10].slice(1), [1, 5, 10], [0, 7, 4]]) {
      await assert.rejects(comms[0]!.reduceScatter(buffer, bounds), /reduceScatter: segment bounds .* do not split 10 elements among 2 ranks: give 3 non-decreasing offsets from 0 to 10/, JSON.stringify(bounds));
    }
    await assert.rejects(comms[0]!.allGatherSegments(buffer, [0, 11, 10]), /allGatherSegments: segment bounds/);
    // nothing was started: both ranks still run a collective together
    const sums = comms.map((c, rank) => Float32Array.from({ length: 10 }, (_, i) => rank + i));
    await Promise.all(comms.map((c, rank) => c.reduceScatter(sums[rank]!, [0, 4, 10])));
    assert.deepEqual([...sums[0]!.subarray(0, 4)], [1, 3, 5, 7]);
    assert.deepEqual([...sums[1]!.subarray(4)], [9, 11, 13, 15, 17, 19]);
  });
});

describe('a peer that closes mid-collective', () => {
  it('its neighbour gets CollectiveError naming it at once, not at the deadline', async (t) => {
    const servers = await commServers(t, 2, 'close-run');
    const peers = servers.map((s) => s.address);
    const comms = servers.map((s, rank) => new Communicator(s, { generation: 1, rank, peers, chunkElements: 16, deadlineMs: 30_000, probeMs: 500 }));
    t.after(() => comms.forEach((c) => c.close()));
    const started = Date.now();
    const pending = comms[0]!.allReduce(new Float32Array(100)); // rank 1 never joins this collective
    // the verdict is awaited from the start: the failure may come before the server has closed
    const verdict = assert.rejects(pending, (e: unknown) => {
      assert.ok(e instanceof CollectiveError, String(e));
      assert.equal(e.peer?.rank, 1, e.message);
      assert.match(e.message, /closed generation 1|unreachable/);
      return true;
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
    comms[1]!.close();
    await servers[1]!.close();
    await verdict;
    assert.ok(Date.now() - started < 10_000, 'it waited for the deadline');
  });
});
