import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { addInto, scaleBy, simdPassesFor, sumOfSquares } from '../src/backend/buffer-passes.js';
import { ReductionBuffer } from '../src/comm/simd-add.js';

/** Seeded values over many magnitudes, with a few exact zeros and negatives. */
function values(n: number, seed: number): Float32Array {
  let state = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const u = state / 4294967296;
    out[i] = i % 97 === 0 ? 0 : (u - 0.5) * 10 ** ((i % 13) - 6);
  }
  return out;
}

describe('gradient passes on SIMD', () => {
  it('a reduction buffer is passed over by the SIMD kernels, a plain array by the loops', () => {
    const simd = ReductionBuffer.allocate(64, 1024);
    assert.ok(simdPassesFor(simd), 'a communicator\'s gradients should get the SIMD passes');
    assert.ok(!simdPassesFor(new Float32Array(64)));
  });

  // odd lengths and offsets: the lanes' tail and unaligned views
  for (const [length, offset] of [[1, 0], [3, 1], [4, 0], [7, 5], [1000, 3], [65_537, 2]] as const) {
    it(`the sum of squares and the scaling equal the loops bit for bit (${length} values at offset ${offset})`, () => {
      const flat = ReductionBuffer.allocate(length + offset + 8, 1024);
      const onSimd = flat.subarray(offset, offset + length);
      const plain = values(length, length + offset);
      onSimd.set(plain);
      assert.ok(simdPassesFor(onSimd));
      assert.equal(sumOfSquares(onSimd), sumOfSquares(plain));
      // against a float64 closed form, to the rounding of a float64 sum
      let exact = 0;
      for (const x of plain) exact += x * x;
      assert.ok(Math.abs(sumOfSquares(plain) - exact) <= 1e-12 * exact + 1e-300, `${sumOfSquares(plain)} vs ${exact}`);
      const factor = 1 / 3.7;
      scaleBy(onSimd, factor);
      scaleBy(plain, factor);
      assert.deepEqual(onSimd, plain);
      assert.equal(plain[length - 1], Math.fround(values(length, length + offset)[length - 1]! * factor));
      // the neighbours of the view and the landing zone before it are untouched
      assert.ok(flat.subarray(0, offset).every((x) => x === 0) && flat.subarray(offset + length).every((x) => x === 0));
      assert.ok(new Uint8Array(flat.buffer, 0, flat.byteOffset).every((b) => b === 0));
    });
  }

  it('a piece added through a staging slice smaller than it equals float32 adds, with the staging in the same memory or not', () => {
    const n = 1003;
    const flat = ReductionBuffer.allocate(n + 64, 1024);
    const [dst, staging] = [flat.subarray(1, n + 1), flat.subarray(n + 3, n + 3 + 40)];
    const src = values(n, 5);
    const base = values(n, 6);
    dst.set(base);
    addInto(dst, src, staging);
    const expected = base.map((x, i) => Math.fround(x + src[i]!));
    assert.deepEqual(dst, expected);
    // a plain destination, or a staging in another memory: the loop, with the same bits
    const plain = new Float32Array(base);
    addInto(plain, src, new Float32Array(40));
    assert.deepEqual(plain, expected);
    // nothing but the destination and the staging slice was written: not the floats around them, not the landing zone before them
    const outside = [...flat.subarray(0, 1), ...flat.subarray(n + 1, n + 3), ...flat.subarray(n + 3 + 40)];
    assert.ok(outside.every((x) => x === 0), 'floats outside the destination and the staging were written');
    assert.ok(new Uint8Array(flat.buffer, 0, flat.byteOffset).every((b) => b === 0), 'the landing zone was written');
    assert.throws(() => addInto(dst, src.subarray(1), staging), /adding 1002 values into 1003/);
  });
});
