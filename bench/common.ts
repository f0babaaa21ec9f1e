/** What the benchmarks share: a pretraining-like batch, a median, and a readable table. */
import { type AddressInfo, createServer } from 'node:net';
import type { Batch } from '../src/batch.js';

const [CLS, SEP, MASK, FIRST_WORD_ID] = [2, 3, 4, 5];

/** An MLM batch as pretraining makes it: 15% of real tokens are targets, 80% of those [MASK]. */
export function mlmBatch(seed: number, batchSize: number, length: number, vocab: number): Batch {
  let state = seed >>> 0;
  const rand = (): number => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 4294967296;
  };
  const n = batchSize * length;
  const tokenIds = new Int32Array(n);
  const segmentIds = new Int32Array(n);
  const targets = new Int32Array(n);
  for (let b = 0; b < batchSize; b++) {
    for (let i = 0; i < length; i++) {
      const k = b * length + i;
      const special = i === 0 || i === length - 1;
      const word = (): number => FIRST_WORD_ID + Math.floor(rand() * (vocab - FIRST_WORD_ID));
      const id = special ? (i === 0 ? CLS : SEP) : word();
      tokenIds[k] = id;
      if (!special && rand() < 0.15) {
        targets[k] = id;
        const r = rand();
        tokenIds[k] = r < 0.8 ? MASK : r < 0.9 ? word() : id;
      }
    }
  }
  return { batchSize, length, tokenIds, segmentIds, targets };
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export const mib = (bytes: number): string => (bytes / 2 ** 20).toFixed(1);

export function table(title: string, header: string[], rows: (string | number)[][]): void {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, c) => Math.max(...cells.map((r) => r[c]!.length)));
  console.log(`\n${title}`);
  cells.forEach((r, i) => {
    console.log(r.map((v, c) => (c === 0 ? v.padEnd(widths[c]!) : v.padStart(widths[c]!))).join('  '));
    if (i === 0) console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  });
}

/** A port free on 127.0.0.1 now: for a server that must keep its address across restarts. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}
