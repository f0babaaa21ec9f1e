import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import type { Message } from '../src/comm/local-launch.js';
import { toHalf, fromHalf } from '../src/comm/fp16.js';
import { commInput, fromBase64, toBase64, type CommStep } from './fixtures/comm-data.js';
import { startRanks } from './fixtures/comm-launch.js';

/** results[step][rank]: every rank's report of every step. */
async function runSteps(t: TestContext, n: number, steps: CommStep[], chunkElements = 16): Promise<Message[][]> {
  const group = await startRanks(t, n, { runId: 'ring-test', generation: 1, chunkElements, deadlineMs: 20_000, steps });
  const results: Message[][] = [];
  for (let s = 0; s < steps.length; s++) {
    const reports = await Promise.all([...Array(n).keys()].map((r) => group.next(r, 30_000)));
    assert.ok(reports.every((m) => m.event === 'result'), `step ${s}: ${reports.map((m, r) => `\nrank ${r}: ${JSON.stringify(m)}`).join('')}`);
    results.push(reports);
  }
  return results;
}

const U32 = 2 ** -24; // unit roundoff of float32

/** Checks every rank's result: bit-identical across ranks, and within the float32 bound of the float64 sum. */
function checkAllReduce(n: number, step: Extract<CommStep, { op: 'allReduce' }>, reports: Message[]): void {
  const data = reports.map((m) => (m.data as string[]).map(fromBase64));
  for (let r = 1; r < n; r++) assert.deepEqual(reports[r]!.data, reports[0]!.data, `rank ${r} differs from rank 0`);
  const fp16 = step.compression === 'fp16';
  let compressed = false;
  step.lengths.forEach((len, b) => {
    const inputs = [...Array(n).keys()].map((r) => commInput(step.seed, r, b, len));
    const got = data[0]![b]!;
    assert.equal(got.length, len);
    for (let i = 0; i < len; i++) {
      let sum = 0;
      let abs = 0;
      for (const x of inputs) {
        sum += x[i]!;
        abs += Math.abs(x[i]!);
      }
      // float32: n-1 additions, each off by at most U32 of a partial sum bounded by abs
      let tol = (n - 1) * U32 * abs;
      if (fp16) tol += n * (2 ** -11 * abs * 1.001 + 2 ** -25); // n roundings to half precision (README)
      let want = sum;
      if (step.reduce === 'mean') {
        want = sum / n;
        tol = tol / n + U32 * Math.abs(want);
      }
      assert.ok(Math.abs(got[i]! - want) <= tol, `${step.reduce} buffer ${b}[${i}] of ${len}, ${n} ranks: ${got[i]} vs ${want} (tolerance ${tol})`);
      if (fp16 && step.reduce === 'sum') {
        assert.equal(fromHalf(toHalf(got[i]!)), got[i], `fp16 result ${got[i]} is not a half-precision value`);
        let f32 = inputs[0]![i]!;
        for (let r = 1; r < n; r++) f32 = Math.fround(f32 + inputs[r]![i]!);
        if (Math.abs(f32 - got[i]!) > 0) compressed = true;
      }
    }
  });
  if (fp16 && step.reduce === 'sum' && step.lengths.some((l) => l > 10)) assert.ok(compressed, 'fp16 results equal the float32 sums: nothing was compressed');
}

for (const n of [2, 3, 4, 5]) {
  describe(`ring collectives, ${n} ranks (processes on 127.0.0.1, chunks of 16 elements)`, () => {
    it('all-reduce sum and mean equal the reference for lengths 0, 1, ranks-1, a prime, several chunks, a list; fp16 within its bound; broadcast and allGather give identical bytes', async (t) => {
      const many = 16 * 3 * n + 5; // about three chunks per segment
      const steps: CommStep[] = [
        { op: 'allReduce', seed: 1, lengths: [0], reduce: 'sum' },
        { op: 'allReduce', seed: 2, lengths: [1], reduce: 'sum' },
        { op: 'allReduce', seed: 3, lengths: [n - 1], reduce: 'sum' },
        { op: 'allReduce', seed: 4, lengths: [997], reduce: 'sum' },
        { op: 'allReduce', seed: 5, lengths: [many], reduce: 'sum' },
        { op: 'allReduce', seed: 6, lengths: [many], reduce: 'mean' },
        { op: 'allReduce', seed: 7, lengths: [3, 0, 50, 1, 129, 17], reduce: 'sum' },
        { op: 'allReduce', seed: 8, lengths: [3, 0, 50, 1, 129, 17], reduce: 'mean' },
        { op: 'allReduce', seed: 9, lengths: [997, 5], reduce: 'sum', compression: 'fp16' },
        { op: 'broadcast', seed: 10, lengths: [5, 0, 333], root: n - 1 },
        { op: 'broadcast', seed: 11, lengths: [70], root: Math.floor(n / 2) },
        { op: 'allGather', seed: 12, count: 3 },
      ];
      const results = await runSteps(t, n, steps);
      steps.forEach((step, s) => {
        const reports = results[s]!;
        if (step.op === 'allReduce') checkAllReduce(n, step, reports);
        else if (step.op === 'broadcast') {
          const want = step.lengths.map((len, b) => toBase64(commInput(step.seed, step.root, b, len)));
          for (const [r, m] of reports.entries()) assert.deepEqual(m.data, want, `broadcast from ${step.root}: rank ${r} got other bytes`);
        } else if (step.op === 'allGather') {
          const want = [...Array(n).keys()].map((r) => toBase64(Float64Array.from(commInput(step.seed, r, 0, step.count), (x) => x * 1e6 + 1 / 3)));
          for (const [r, m] of reports.entries()) assert.deepEqual(m.data, want, `allGather: rank ${r} got other bytes`);
        }
      });
    });
  });
}

for (const n of [2, 3]) {
  describe(`ring collectives, ${n} ranks, chunks of 256 KiB (payloads read in place)`, () => {
    it('all-reduce (sum, mean, fp16, into Communicator.allocate memory) and broadcast of buffers whose chunks straddle buffer boundaries equal the reference', async (t) => {
      const lengths = [300_001, 1, 70_001, 250_000];
      const steps: CommStep[] = [
        { op: 'allReduce', seed: 21, lengths, reduce: 'sum' },
        { op: 'allReduce', seed: 22, lengths, reduce: 'mean' },
        { op: 'allReduce', seed: 25, lengths, reduce: 'sum', pinned: true },
        { op: 'allReduce', seed: 23, lengths: [200_000], reduce: 'sum', compression: 'fp16' },
        { op: 'broadcast', seed: 24, lengths, root: n - 1 },
      ];
      const results = await runSteps(t, n, steps, 1 << 16);
      steps.forEach((step, s) => {
        if (step.op === 'allReduce') checkAllReduce(n, step, results[s]!);
        else if (step.op === 'broadcast') {
          const want = step.lengths.map((len, b) => toBase64(commInput(step.seed, step.root, b, len)));
          for (const [r, m] of results[s]!.entries()) assert.ok(JSON.stringify(m.data) === JSON.stringify(want), `broadcast from ${step.root}: rank ${r} got other bytes`);
        }
      });
    });
  });
}

/** Bounds of n segments over `total` elements: rank 0's empty, the others growing with the rank (uneven on purpose). */
function unevenBounds(n: number, total: number): number[] {
  const weights = [0, ...Array.from({ length: n - 1 }, (_, r) => r + 1)];
  const sum = weights.reduce((a, b) => a + b, 0);
  let acc = 0;
  return [0, ...weights.map((w) => Math.round((total * (acc += w)) / sum))];
}

for (const n of [2, 3, 4]) {
  describe(`reduce-scatter and all-gather over chosen segments, ${n} ranks (processes on 127.0.0.1, chunks of 16 elements)`, () => {
    it('each rank holds the sum of its own segment (an empty one too), and the gather gives every rank each owner\'s segment, bit for bit', async (t) => {
      const lengths = [5, 0, 97, 33, 211];
      const total = lengths.reduce((a, b) => a + b, 0);
      const even = [...Array(n + 1).keys()].map((r) => Math.floor((r * total) / n));
      const steps: Extract<CommStep, { op: 'reduceScatter' | 'allGatherSegments' }>[] = [
        { op: 'reduceScatter', seed: 31, lengths, bounds: unevenBounds(n, total) },
        { op: 'reduceScatter', seed: 32, lengths, bounds: even },
        { op: 'allGatherSegments', seed: 33, lengths, bounds: unevenBounds(n, total) },
        { op: 'allGatherSegments', seed: 34, lengths, bounds: even },
      ];
      const results = await runSteps(t, n, steps);
      steps.forEach((step, s) => {
        const reports = results[s]!;
        const flatOf = (m: Message): Float32Array => {
          const parts = (m.data as string[]).map(fromBase64);
          const out = new Float32Array(total);
          let at = 0;
          for (const p of parts) {
            out.set(p, at);
            at += p.length;
          }
          return out;
        };
        const inputs = [...Array(n).keys()].map((r) => {
          const out = new Float32Array(total);
          let at = 0;
          lengths.forEach((len, b) => {
            out.set(commInput(step.seed, r, b, len), at);
            at += len;
          });
          return out;
        });
        if (step.op === 'reduceScatter') {
          let checked = 0;
          for (let r = 0; r < n; r++) {
            const got = flatOf(reports[r]!);
            for (let i = step.bounds[r]!; i < step.bounds[r + 1]!; i++, checked++) {
              let sum = 0;
              let abs = 0;
              for (const x of inputs) {
                sum += x[i]!;
                abs += Math.abs(x[i]!);
              }
              assert.ok(Math.abs(got[i]! - sum) <= (n - 1) * U32 * abs, `reduceScatter: rank ${r}'s element ${i}: ${got[i]} vs ${sum}`);
            }
          }
          assert.equal(checked, total, 'the segments cover the buffer');
        } else if (step.op === 'allGatherSegments') {
          const want = new Float32Array(total);
          for (let r = 0; r < n; r++) want.set(inputs[r]!.subarray(step.bounds[r]!, step.bounds[r + 1]!), step.bounds[r]!);
          for (const [r, m] of reports.entries()) assert.deepEqual(flatOf(m), want, `allGatherSegments: rank ${r} got other values`);
        }
      });
    });
  });
}
