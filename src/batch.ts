import type { Application } from './model/build.js';

/**
 * A batch in host memory, row-major [batch, length]. `targets[b,i]` is the token id the
 * output at position i must predict, 0 where there is no loss.
 */
export interface Batch {
  readonly batchSize: number;
  readonly length: number;
  readonly tokenIds: Int32Array;
  readonly segmentIds: Int32Array;
  readonly targets: Int32Array;
}

/**
 * Targets of the sequence applications: the next token (shift by one), for unilm only
 * where that next token is in segment 1 (the target side), never padding.
 */
export function nextTokenTargets(application: Exclude<Application, 'encoder'>, batchSize: number, length: number, tokenIds: Int32Array, segmentIds: Int32Array): Int32Array {
  const targets = new Int32Array(batchSize * length);
  for (let b = 0; b < batchSize; b++) {
    for (let i = 0; i + 1 < length; i++) {
      const next = b * length + i + 1;
      if (tokenIds[next] === 0) continue;
      if (application === 'unilm' && segmentIds[next] !== 1) continue;
      targets[next - 1] = tokenIds[next]!;
    }
  }
  return targets;
}

export function sliceBatch(batch: Batch, start: number, end: number): Batch {
  const from = start * batch.length;
  const to = end * batch.length;
  return {
    batchSize: end - start,
    length: batch.length,
    tokenIds: batch.tokenIds.subarray(from, to),
    segmentIds: batch.segmentIds.subarray(from, to),
    targets: batch.targets.subarray(from, to),
  };
}

export function countTargets(batch: Batch): number {
  let n = 0;
  for (const t of batch.targets) if (t !== 0) n++;
  return n;
}
