import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { claimableSamples, claimSize, type Share, ShareBalancer, stepOrder } from '../src/coordinator/shares.js';
import { lcg } from './helpers.js';

const sizes = (shares: readonly Share[]): number[] => shares.map((s) => s.to - s.from);

function assertCovers(shares: readonly Share[], samples: number): void {
  let at = 0;
  for (const s of shares) {
    assert.equal(s.from, at, 'shares are contiguous, in rank order');
    assert.ok(s.to >= s.from, 'no negative share');
    at = s.to;
  }
  assert.equal(at, samples, 'the shares cover the global batch exactly');
}

describe('splitting a step across the ranks', () => {
  it('even: rank r gets [r*B/W, (r+1)*B/W), also with fewer samples than ranks', () => {
    const even = new ShareBalancer('even');
    assert.deepEqual(even.split(16, 128, [1, 2]), [{ from: 0, to: 8 }, { from: 8, to: 16 }]);
    assert.deepEqual(sizes(even.split(10, 128, [1, 2, 3])), [3, 3, 4]);
    assert.deepEqual(sizes(even.split(2, 128, [1, 2, 3])), [0, 1, 1]);
    assert.deepEqual(sizes(even.split(0, 128, [1, 2])), [0, 0]);
    // measurements do not change an even split
    even.observe(1, 1024, 1, 0);
    even.observe(2, 1024, 3, 0);
    assert.deepEqual(sizes(even.split(16, 128, [1, 2])), [8, 8]);
  });

  it('dynamic: even until every rank has been measured, then inversely to each one\'s time per sample', () => {
    const b = new ShareBalancer('dynamic');
    assert.deepEqual(sizes(b.split(12, 10, [1, 2])), [6, 6]);
    b.observe(1, 60, 1.2, 0); // 0.02 s per position
    assert.deepEqual(sizes(b.split(12, 10, [1, 2])), [6, 6], 'worker 2 not measured yet');
    b.observe(2, 60, 0.6, 0); // twice as fast
    assert.deepEqual(sizes(b.split(12, 10, [1, 2])), [4, 8]);
    // the ranks' order is the workers' order
    assert.deepEqual(sizes(b.split(12, 10, [2, 1])), [8, 4]);
    // steps of other lengths: the same ratio (costs are kept per position)
    assert.deepEqual(sizes(b.split(12, 40, [1, 2])), [4, 8]);
  });

  it('dynamic: a rank with a longer fixed time gets fewer samples, none if its fixed time alone is the longest', () => {
    const b = new ShareBalancer('dynamic');
    b.observe(1, 800, 0.8, 0); // 1 ms per position: 0.1 s per sample
    b.observe(2, 800, 0.8, 0.4); // as fast, 0.4 s of fixed work
    // T = (16 + 0/0.1 + 0.4/0.1) / (2/0.1) = 1.0 s: rank 0 gets 10, rank 1 gets 6
    assert.deepEqual(sizes(b.split(16, 100, [1, 2])), [10, 6]);
    const c = new ShareBalancer('dynamic');
    c.observe(1, 400, 0.4, 0);
    c.observe(2, 400, 0.4, 5);
    c.observe(3, 400, 0.4, 0);
    assert.deepEqual(sizes(c.split(6, 100, [1, 2, 3])), [3, 0, 3]);
  });

  it('dynamic: follows a rank that slows down, and a forgotten worker is measured afresh', () => {
    const b = new ShareBalancer('dynamic');
    b.observe(1, 80, 0.8, 0);
    b.observe(2, 80, 0.8, 0);
    assert.deepEqual(sizes(b.split(16, 10, [1, 2])), [8, 8]);
    let previous = 8;
    for (let i = 0; i < 6; i++) {
      b.observe(1, 80, 1.6, 0); // worker 1 now takes twice as long
      b.observe(2, 80, 0.8, 0);
      const first = sizes(b.split(16, 10, [1, 2]))[0]!;
      assert.ok(first <= previous, `worker 1's share shrinks step by step (${first} after ${previous})`);
      previous = first;
    }
    assert.ok(previous <= 6, `worker 1's share ends near 16/3 (${previous})`);
    b.forget(1);
    assert.deepEqual(sizes(b.split(16, 10, [1, 2])), [8, 8]);
    // reports that teach nothing are ignored
    b.observe(1, 0, 0, 0);
    b.observe(1, 40, Number.NaN, 0);
    assert.deepEqual(sizes(b.split(16, 10, [1, 2])), [8, 8]);
  });

  it('claims: the shorter half of the batch with --balance dynamic, with one worker too; pieces shrink from ceil(left / W) to one', () => {
    assert.equal(claimableSamples(16, 2, 'dynamic'), 8);
    assert.equal(claimableSamples(64, 8, 'dynamic'), 32);
    assert.equal(claimableSamples(1, 2, 'dynamic'), 0);
    assert.equal(claimableSamples(16, 1, 'dynamic'), 8, 'one worker claims the half too: it pads as two do');
    assert.equal(claimableSamples(16, 2, 'even'), 0);
    const pieces = (left: number, ranks: number): number[] => {
      const out: number[] = [];
      for (; left > 0; left -= out.at(-1)!) out.push(claimSize(left, ranks));
      return out;
    };
    assert.deepEqual(pieces(8, 2), [4, 2, 1, 1]);
    assert.deepEqual(pieces(16, 4), [4, 3, 3, 2, 1, 1, 1, 1]);
    assert.deepEqual(pieces(8, 1), [4, 2, 1, 1], 'one worker: the pieces two would take');
    assert.equal(claimSize(0, 2), 0, 'nothing left: an empty reply');
  });

  it('a step\'s order puts its shorter half last, longest first, the rest in the ledger\'s order; the same records, whatever the ranks', () => {
    // record id -> length
    const lengths = [50, 10, 90, 30, 10, 70, 20, 60, 40];
    const records = [8, 1, 2, 0, 4, 3, 6, 5, 7];
    const ordered = stepOrder(records, lengths);
    // the shorter half (4 of 9): ids 1 and 4 (both 10: the ledger's order breaks the tie), 6 (20) and 3 (30)
    assert.deepEqual(ordered, [8, 2, 0, 5, 7, 3, 6, 1, 4]);
    assert.deepEqual([...ordered].sort(), [...records].sort(), 'a permutation');
    const tail = ordered.slice(-claimableSamples(records.length, 2, 'dynamic')).map((id) => lengths[id]!);
    const rest = ordered.slice(0, -tail.length).map((id) => lengths[id]!);
    assert.ok(Math.max(...tail) <= Math.min(...rest), 'what is claimed is the shortest');
    assert.deepEqual(tail, [30, 20, 10, 10], 'longest first among the claimed');
    assert.deepEqual(stepOrder([3], [1, 2, 3, 4]), [3], 'one record: no half to move');
  });

  it('dynamic: any measured speeds give contiguous shares that cover the batch, each within 1 of its exact value', () => {
    const rand = lcg(11);
    for (let trial = 0; trial < 200; trial++) {
      const b = new ShareBalancer('dynamic');
      const ranks = 2 + Math.floor(rand() * 6);
      const ids = Array.from({ length: ranks }, (_, r) => r + 1);
      const perSample = ids.map(() => 0.05 + rand());
      for (const [r, id] of ids.entries()) b.observe(id, 4, 4 * perSample[r]!, 0);
      const samples = Math.floor(rand() * 64);
      const shares = b.split(samples, 1, ids);
      assertCovers(shares, samples);
      const rate = perSample.reduce((a, s) => a + 1 / s, 0);
      sizes(shares).forEach((c, r) => {
        const exact = samples / perSample[r]! / rate;
        assert.ok(Math.abs(c - exact) < 1 + 1e-9, `trial ${trial}: rank ${r} got ${c}, exact ${exact}`);
      });
    }
  });
});
