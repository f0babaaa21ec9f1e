import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type CommittedStep, DataLedger, epochPermutation, LedgerError, type LedgerState, type StepRecords } from '../src/run/ledger.js';
import { lcg } from './helpers.js';

/** Record ids that are not 0..n-1, so a mix-up of ids and positions shows. */
function ids(n: number): number[] {
  return Array.from({ length: n }, (_, i) => 1000 + 3 * i);
}

function roundTrip(state: LedgerState): LedgerState {
  return JSON.parse(JSON.stringify(state)) as LedgerState;
}

function handOut(ledger: DataLedger, step: number): StepRecords {
  const s = ledger.next(step);
  assert.ok(s, `step ${step} got no records`);
  return s;
}

describe('epochPermutation', () => {
  it('is a permutation, the same for the same seed and epoch, different across epochs and seeds', () => {
    const a = epochPermutation(7, 0, 1000);
    assert.deepEqual([...a].sort((x, y) => x - y), Array.from({ length: 1000 }, (_, i) => i));
    assert.deepEqual(epochPermutation(7, 0, 1000), a);
    assert.notDeepEqual(epochPermutation(7, 1, 1000), a);
    assert.notDeepEqual(epochPermutation(8, 0, 1000), a);
    // not the identity, and not a rotation of it
    assert.ok(a.filter((v, i) => v === i).length < 20);
  });
});

describe('DataLedger', () => {
  it('hands out full steps in permutation order, a short last step, and advances the epoch when all have committed', () => {
    const recordIds = ids(10);
    const ledger = new DataLedger({ recordIds, seed: 3, globalBatch: 4 });
    const perm = epochPermutation(3, 0, 10);
    const s0 = handOut(ledger, 0);
    assert.deepEqual(s0.records, [...perm.slice(0, 4)].map((i) => recordIds[i]));
    assert.deepEqual(s0.positions, [[0, 4]]);
    const s1 = handOut(ledger, 1);
    const s2 = handOut(ledger, 2);
    assert.equal(s2.records.length, 2, 'the last step of an epoch is short');
    assert.equal(ledger.next(3), undefined, 'nothing to hand out while the epoch tail is in flight');
    ledger.commit(0);
    ledger.commit(2);
    assert.equal(ledger.epoch, 0);
    assert.equal(ledger.consumedInEpoch, 6);
    const c1 = ledger.commit(1);
    assert.deepEqual(c1, { step: 1, epoch: 0, positions: [[4, 8]] });
    assert.equal(ledger.epoch, 1);
    assert.equal(ledger.completedEpochs, 1);
    assert.deepEqual([...s0.records, ...s1.records, ...s2.records].sort(), [...recordIds].sort());
    const next = handOut(ledger, 3);
    assert.equal(next.epoch, 1);
    assert.deepEqual(next.records, [...epochPermutation(3, 1, 10).slice(0, 4)].map((i) => recordIds[i]));
  });

  it('gives an aborted middle step\'s records back first, in their order, while later steps stay in flight', () => {
    const ledger = new DataLedger({ recordIds: ids(20), seed: 1, globalBatch: 4 });
    const s0 = handOut(ledger, 0);
    const s1 = handOut(ledger, 1);
    const s2 = handOut(ledger, 2);
    ledger.abort(1);
    assert.deepEqual(ledger.stepsInFlight, [0, 2]);
    const retry = handOut(ledger, 1);
    assert.deepEqual(retry.records, s1.records, 'the retried step gets the same records in the same order');
    assert.deepEqual(retry.positions, s1.positions);
    // aborted in the reverse order, they still come back in permutation order
    ledger.abort(2);
    ledger.abort(0);
    const again0 = handOut(ledger, 3);
    const again2 = handOut(ledger, 4);
    assert.deepEqual(again0.records, s0.records);
    assert.deepEqual(again2.records, s2.records);
    assert.deepEqual(handOut(ledger, 5).positions, [[12, 16]], 'then the never-handed records');
    ledger.abort(5);
    for (const step of [4, 3, 1]) ledger.commit(step);
    assert.equal(ledger.consumedInEpoch, 12);
    assert.deepEqual(ledger.state().returned, [[12, 16]], 'the aborted step 5');
    assert.equal(ledger.state().cursor, 16);
  });

  it('refuses bookkeeping errors with a message saying what is wrong', () => {
    const ledger = new DataLedger({ recordIds: ids(10), seed: 1, globalBatch: 4 });
    assert.throws(() => ledger.commit(0), /not in flight/);
    handOut(ledger, 0);
    assert.throws(() => ledger.next(0), /already in flight/);
    ledger.commit(0);
    assert.throws(() => ledger.abort(0), /not in flight/);
    assert.throws(() => new DataLedger({ recordIds: [1, 2, 1], seed: 1, globalBatch: 1 }), /appears twice/);
    assert.throws(() => new DataLedger({ recordIds: [], seed: 1, globalBatch: 1 }), LedgerError);
    assert.throws(() => new DataLedger({ recordIds: [1], seed: 1, globalBatch: 0 }), /global batch/);
  });

  it('round-trips its state through JSON mid-epoch: the restored ledger hands out the same future steps', () => {
    const recordIds = ids(103);
    const a = new DataLedger({ recordIds, seed: 9, globalBatch: 8 });
    for (let step = 0; step < 5; step++) handOut(a, step);
    a.commit(0);
    a.commit(1);
    a.abort(2);
    a.commit(3);
    a.commit(4);
    const state = a.state();
    const b = DataLedger.fromState(roundTrip(state), recordIds);
    assert.deepEqual(b.state(), state);
    for (let step = 5; step < 40; step++) {
      const x = a.next(step);
      const y = b.next(step);
      assert.deepEqual(y, x, `step ${step}`);
      if (x) {
        a.commit(step);
        b.commit(step);
      }
    }
    assert.equal(a.epoch, 3, 'the steps crossed epoch boundaries');
    assert.deepEqual(b.state(), a.state());
  });

  it('counts steps in flight as returned in its state, so a restored run hands them out again first', () => {
    const recordIds = ids(50);
    const a = new DataLedger({ recordIds, seed: 2, globalBatch: 5 });
    handOut(a, 0);
    a.commit(0);
    const inFlight = handOut(a, 1);
    const b = DataLedger.fromState(roundTrip(a.state()), recordIds);
    assert.deepEqual(b.stepsInFlight, []);
    assert.deepEqual(handOut(b, 1).records, inFlight.records);
  });

  it('keeps its state small: ranges, not one number per record', () => {
    const a = new DataLedger({ recordIds: Array.from({ length: 1_000_000 }, (_, i) => i), seed: 5, globalBatch: 1000 });
    for (let step = 0; step < 300; step++) {
      handOut(a, step);
      if (step % 7 === 3) a.abort(step);
      else a.commit(step);
    }
    const json = JSON.stringify(a.state());
    assert.ok(json.length < 2000, `${json.length} bytes`);
  });

  it('refuses a state taken on other records, or not a ledger state', () => {
    const a = new DataLedger({ recordIds: ids(10), seed: 1, globalBatch: 4 });
    assert.throws(() => DataLedger.fromState(a.state(), ids(11)), /taken on 10 records.*has 11/);
    assert.throws(() => DataLedger.fromState(a.state(), [...ids(9), 5]), /digest/);
    assert.throws(() => DataLedger.fromState({ ...a.state(), cursor: 11 }, ids(10)), /past the 10 records/);
    assert.throws(() => DataLedger.fromState({ ...a.state(), returned: [[3, 2]] }, ids(10)), /empty/);
    assert.throws(() => DataLedger.fromState({ format: 'x' } as unknown as LedgerState, ids(10)), /format x/);
  });

  it('redo replays journaled commits onto an earlier state and reaches the same state, gaps of uncommitted steps included', () => {
    const recordIds = ids(30);
    const a = new DataLedger({ recordIds, seed: 4, globalBatch: 4 });
    handOut(a, 0);
    const checkpoint = roundTrip(a.state()); // step 0 in flight: returned in the state
    const journal: CommittedStep[] = [];
    journal.push(a.commit(0));
    for (const step of [1, 2, 3]) handOut(a, step);
    journal.push(a.commit(3)); // 1 and 2 still in flight: a gap below step 3's positions
    a.abort(2);
    journal.push(a.commit(1));
    for (let step = 4; step < 12; step++) {
      if (!a.next(step)) continue;
      journal.push(a.commit(step));
    }
    a.abortAll();
    const b = DataLedger.fromState(checkpoint, recordIds);
    for (const c of journal) b.redo(JSON.parse(JSON.stringify(c)) as CommittedStep);
    assert.deepEqual(b.state(), a.state());
    assert.throws(() => b.redo(journal[journal.length - 1]!), /already consumed|epoch/);
    const fresh = DataLedger.fromState(checkpoint, recordIds);
    fresh.redo(journal[0]!);
    assert.throws(() => fresh.redo(journal[0]!), /already consumed/);
  });

  it('keeps exactly-once under random next/commit/abort/restore over several epochs (seeded)', () => {
    for (const seed of [1, 2, 3]) {
      const rand = lcg(seed);
      const n = 37 + seed * 11;
      const recordIds = ids(n);
      const batch = 1 + Math.floor(rand() * 9);
      let ledger = new DataLedger({ recordIds, seed, globalBatch: batch });
      const committed = new Map<number, Map<number, number>>(); // epoch -> record -> times
      const inFlight = new Map<number, StepRecords>();
      let step = 0;
      let operations = 0;
      while (ledger.completedEpochs < 4) {
        assert.ok(++operations < 10_000, 'the ledger stopped making progress');
        const r = rand();
        const steps = [...inFlight.keys()];
        if (r < 0.45 || steps.length === 0) {
          const s = ledger.next(step);
          if (!s) {
            assert.ok(steps.length > 0, 'undefined from next() only while steps are in flight');
            continue;
          }
          for (const other of inFlight.values()) {
            const overlap: number[] = s.records.filter((id) => other.records.includes(id));
            assert.deepEqual(overlap, [], `steps ${other.step} and ${step} hold the same records at once`);
          }
          inFlight.set(step++, s);
        } else if (r < 0.85) {
          const s = inFlight.get(steps[Math.floor(rand() * steps.length)]!)!;
          inFlight.delete(s.step);
          const c = ledger.commit(s.step);
          assert.equal(c.epoch, s.epoch);
          const counts = committed.get(s.epoch) ?? new Map<number, number>();
          committed.set(s.epoch, counts);
          for (const id of s.records) counts.set(id, (counts.get(id) ?? 0) + 1);
        } else if (r < 0.97) {
          const s = steps[Math.floor(rand() * steps.length)]!;
          inFlight.delete(s);
          ledger.abort(s);
        } else {
          // a restart: the steps in flight are lost, their records come back
          ledger = DataLedger.fromState(roundTrip(ledger.state()), recordIds);
          inFlight.clear();
        }
      }
      for (let epoch = 0; epoch < 4; epoch++) {
        const counts = committed.get(epoch)!;
        assert.equal(counts.size, n, `seed ${seed}, epoch ${epoch}: every record committed`);
        assert.ok([...counts.values()].every((c) => c === 1), `seed ${seed}, epoch ${epoch}: no record committed twice`);
      }
    }
  });
});
