import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { AuthConfigError, JoinToken } from '../src/comm/auth.js';
import { allReduceSchedule, FlatBuffers, segment } from '../src/comm/flat.js';
import { addHalf, encodeHalf, fromHalf, roundHalfInPlace, toHalf } from '../src/comm/fp16.js';
import { chunkPrefix, decodeChunk, Encoding } from '../src/comm/proto.js';
import { ChunkAdder, ReductionBuffer } from '../src/comm/simd-add.js';
import { HeaderDecoder, encodeHeaders } from '../src/comm/h2/hpack.js';
import { decodeGrpcMessage, encodeGrpcMessage, FramingError, grpcTimeout, MessageReader } from '../src/comm/wire.js';
import { lcg } from './helpers.js';

describe('fp16 (round to nearest even)', () => {
  it('rounds the boundary cases as IEEE 754 does', () => {
    const cases: [number, number][] = [
      [0, 0x0000],
      [-0, 0x8000],
      [1, 0x3c00],
      [-2, 0xc000],
      [65504, 0x7bff], // largest half
      [65519.99, 0x7bff],
      [65520, 0x7c00], // ties away from 65504 to even: Infinity
      [Infinity, 0x7c00],
      [-Infinity, 0xfc00],
      [2 ** -14, 0x0400], // smallest normal
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // tie between 0 and 2^-24: even is 0
      [1.5 * 2 ** -24, 0x0002], // tie between 1 and 2 units: even is 2
      [2.5 * 2 ** -24, 0x0002], // tie between 2 and 3 units: even is 2
      [1 + 2 ** -11, 0x3c00], // tie: even mantissa 0
      [1 + 3 * 2 ** -11, 0x3c02], // tie: even mantissa 2
      [1 + 2 ** -11 + 2 ** -20, 0x3c01], // just above the tie
      [2 ** -14 - 2 ** -25, 0x0400], // rounds up into the normals
    ];
    for (const [x, bits] of cases) assert.equal(toHalf(x), bits, `toHalf(${x}) = 0x${toHalf(x).toString(16)}, want 0x${bits.toString(16)}`);
    assert.ok(Number.isNaN(fromHalf(toHalf(NaN))));
  });

  it('every finite half round-trips, and random floats go to the nearest half (ties to even)', () => {
    for (let h = 0; h < 0x10000; h++) {
      if ((h & 0x7c00) === 0x7c00) continue;
      assert.equal(toHalf(fromHalf(h)), h, `0x${h.toString(16)}`);
    }
    const rand = lcg(5);
    const finite = [...Array(0x7c00).keys()].map(fromHalf); // non-negative halves, increasing
    // binary search for the halves around |x|, then nearest with ties to the even bit pattern
    for (let k = 0; k < 20_000; k++) {
      const x = Math.fround((rand() * 2 - 1) * 2 ** Math.floor(rand() * 40 - 26));
      const a = Math.abs(x);
      if (a >= 65504) continue;
      let lo = 0;
      let hi = finite.length - 1;
      while (hi - lo > 1) {
        const mid = (lo + hi) >> 1;
        if (finite[mid]! <= a) lo = mid;
        else hi = mid;
      }
      const dl = a - finite[lo]!;
      const dh = finite[hi]! - a;
      const want = dl < dh ? lo : dh < dl ? hi : lo % 2 === 0 ? lo : hi;
      assert.equal(toHalf(a), want, `|x| = ${a}`);
      assert.equal(toHalf(-a), want | 0x8000, `x = ${-a}`);
    }
  });

  it('array helpers: encode, add in float32, round in place', () => {
    const x = Float32Array.from([1, 1 + 2 ** -11, -3.14159, 1e-6, 70000]);
    const h = new Uint16Array(x.length);
    encodeHalf(x, h);
    assert.deepEqual([...h], [...x].map(toHalf));
    const acc = new Float32Array(x.length).fill(0.5);
    addHalf(acc, h);
    assert.deepEqual([...acc], [...x].map((v) => Math.fround(0.5 + fromHalf(toHalf(v)))));
    roundHalfInPlace(x);
    assert.deepEqual([...x], [...h].map(fromHalf));
    assert.equal(x[4], Infinity);
  });
});

describe('flat buffers and the ring schedule', () => {
  it('pieces are views of the right buffers, without copies', () => {
    const bufs = [new Float32Array(3), new Float32Array(0), new Float32Array(5), new Float32Array(2)];
    const flat = new FlatBuffers(bufs);
    assert.equal(flat.length, 10);
    const pieces = flat.pieces(2, 6);
    assert.deepEqual(pieces.map((p) => [p.buffer === bufs[0]!.buffer || p.buffer === bufs[2]!.buffer, p.length]), [[true, 1], [true, 5]]);
    pieces[1]![4] = 7;
    assert.equal(bufs[2]![4], 7);
    assert.deepEqual(flat.pieces(8, 2).map((p) => p.length), [2]);
    assert.deepEqual(flat.pieces(4, 0), []);
  });

  it('segments tile the buffer; every position sends what it received one step before', () => {
    for (const n of [2, 3, 5]) {
      for (const length of [0, 1, n - 1, 31, 100]) {
        const covered: number[] = [];
        for (let k = 0; k < n; k++) covered.push(...Array.from({ length: segment(length, n, k)[1] - segment(length, n, k)[0] }, (_, i) => segment(length, n, k)[0] + i));
        assert.deepEqual(covered, [...Array(length).keys()]);
        for (let p = 0; p < n; p++) {
          const s = allReduceSchedule(length, n, p, 4);
          const right = allReduceSchedule(length, n, (p + 1) % n, 4);
          // what p sends is exactly what its right neighbour expects, in the same order
          assert.deepEqual(s.sends, right.receives, `n ${n}, length ${length}, position ${p}`);
          s.sendAfter.forEach((after, i) => {
            if (after >= 0) assert.deepEqual([s.receives[after]!.offset, s.receives[after]!.length], [s.sends[i]!.offset, s.sends[i]!.length]);
          });
          // reduce-scatter receives every segment but p's own, all-gather every segment but the one p reduced
          const size = (k: number): number => segment(length, n, k)[1] - segment(length, n, k)[0];
          const received = s.receives.reduce((sum, t) => sum + t.length, 0);
          assert.equal(received, 2 * length - size(p) - size((p + 1) % n));
        }
      }
    }
  });
});

describe('SIMD add', () => {
  it('ReductionBuffer: its views are recognised, and a landed chunk is added into them in place, as float32 scalar code does', () => {
    const data = ReductionBuffer.allocate(1003, 4096);
    assert.ok(data.every((x) => x === 0), 'zeroed');
    const rb = ReductionBuffer.holding([data.subarray(0, 10), data.subarray(10)]);
    assert.ok(rb, 'views of one buffer are recognised');
    assert.equal(ReductionBuffer.holding([new Float32Array(8)]), undefined);
    assert.equal(ReductionBuffer.holding([data, new Float32Array(8)]), undefined, 'a list that leaves the buffer is not');
    const rand = lcg(4);
    for (const [start, length, at] of [[0, 1003, 0], [5, 7, 0], [17, 1, 12], [100, 333, 4]] as const) {
      for (let i = 0; i < data.length; i++) data[i] = rand() - 0.5;
      const before = Float32Array.from(data);
      const src: Float32Array = new Float32Array(rb.landing.buffer, rb.landing.byteOffset + at, length);
      for (let i = 0; i < length; i++) src[i] = rand() - 0.5;
      rb.addLanded(data.subarray(start, start + length), at);
      for (let i = 0; i < data.length; i++) {
        const want: number = i >= start && i < start + length ? Math.fround(before[i]! + src[i - start]!) : before[i];
        assert.equal(data[i], want, `[${i}] after adding ${length} at ${start}`);
      }
    }
  });

  it('adds exactly as float32 scalar code does, for any length and 4-byte offset, from the assembly buffer or elsewhere', () => {
    const adder = new ChunkAdder(4096 + 64, 1024);
    const rand = lcg(9);
    for (const length of [0, 1, 3, 4, 5, 8, 9, 255, 1000, 1024]) {
      for (const byteOffset of [0, 4, 8, 12, 40]) {
        const src = new Float32Array(adder.assembly.buffer, adder.assembly.byteOffset + byteOffset, length);
        const elsewhere = new Float32Array(length);
        for (let i = 0; i < length; i++) elsewhere[i] = src[i] = rand() * 2e3 - 1e3;
        const dst = Float32Array.from({ length }, () => rand() * 2 - 1);
        const want = dst.map((x, i) => Math.fround(x + src[i]!));
        const other = dst.slice();
        adder.add(dst, src);
        adder.add(other, elsewhere);
        assert.deepEqual(dst, want, `length ${length} at +${byteOffset}`);
        assert.deepEqual(other, want, `length ${length}, source outside the module`);
      }
    }
  });
});

describe('wire format', () => {
  it('a chunk prefix puts the payload at a 4-byte-aligned offset of a valid protobuf message', () => {
    for (const runId of ['', 'r', 'run-12', 'x'.repeat(37)]) {
      for (const bytes of [0, 4, 128, 1 << 20]) {
        const header = { runId, generation: 3, sequence: 300, index: 5, offset: 123_456, encoding: Encoding.FLOAT16 };
        const prefix = chunkPrefix(header, bytes);
        assert.equal(prefix.readUInt32BE(1), prefix.length - 5 + bytes);
        assert.equal((prefix.length - 5) % 4, 0, `${runId.length}/${bytes}`);
        const data = new Uint8Array(bytes).map((_, i) => i & 0xff);
        const { data: got, pad: _pad, ...fields } = decodeChunk(Buffer.concat([prefix.subarray(5), data])) as ReturnType<typeof decodeChunk> & { pad: unknown };
        assert.deepEqual(fields, header);
        assert.deepEqual(Buffer.from(got), Buffer.from(data));
      }
    }
  });

  it('MessageReader reassembles messages split anywhere and refuses oversized or compressed ones', () => {
    const messages = [Buffer.from('a'), Buffer.alloc(0), Buffer.alloc(300, 7)];
    const framed = (m: Buffer): Buffer => {
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(m.length, 1);
      return Buffer.concat([prefix, m]);
    };
    const stream = Buffer.concat(messages.map(framed));
    for (const step of [1, 2, 5, 7, 1000]) {
      const got: Buffer[] = [];
      const r = new MessageReader(300, (m) => got.push(Buffer.from(m)));
      for (let at = 0; at < stream.length; at += step) r.push(stream.subarray(at, at + step));
      assert.deepEqual(got, messages);
      assert.equal(r.partial, false);
    }
    // with a router: the 300-byte message's payload after a 20-byte head goes into two targets, by copies or by direct reads
    for (const step of [1, 7, 64, 1000]) {
      for (const direct of [false, true]) {
        const got: Buffer[] = [];
        const routed: Buffer[] = [];
        const targets = [Buffer.alloc(100), Buffer.alloc(180)];
        const r = new MessageReader(300, (m) => got.push(Buffer.from(m)), undefined, (head, bytes) => {
          assert.equal(bytes, 300);
          assert.deepEqual(head.subarray(0, 20), Buffer.alloc(20, 7));
          return { headBytes: 20, targets, complete: () => routed.push(Buffer.concat(targets)) };
        });
        let at = 0;
        while (at < stream.length) {
          const into = direct ? r.directTarget(step) : undefined;
          if (into) {
            into.set(stream.subarray(at, at + into.length));
            r.advance(into.length);
            at += into.length;
          } else {
            r.push(stream.subarray(at, at + step));
            at += step;
          }
        }
        assert.deepEqual(got, messages.slice(0, 2), `step ${step}, direct ${direct}`);
        assert.deepEqual(routed, [Buffer.alloc(280, 7)]);
        assert.equal(r.partial, false);
      }
    }
    assert.throws(() => new MessageReader(299, () => {}).push(stream.subarray(11)), (e: unknown) => e instanceof FramingError && /300 bytes, over the limit of 299/.test(e.message));
    assert.throws(() => new MessageReader(10, () => {}).push(Buffer.from([1, 0, 0, 0, 1, 0])), /compressed/);
  });

  it('grpc-timeout keeps to 8 digits; HPACK literals decode, with any header name', () => {
    assert.equal(grpcTimeout(0.2), '1m');
    assert.equal(grpcTimeout(60_000), '60000m');
    assert.equal(grpcTimeout(99_999_999), '99999999m');
    assert.equal(grpcTimeout(100_000_000), '100000S');
    assert.equal(grpcTimeout(1e14), '27777778H');
    const decoded = new HeaderDecoder(1 << 16).decode(encodeHeaders([[':status', '200'], ['constructor', 'x'], ['toString', 'y'], ['a', '1'], ['a', '2']]));
    assert.deepEqual({ ...decoded }, { ':status': '200', constructor: 'x', toString: 'y', a: '1, 2' });
  });

  it('grpc-message percent-encoding round-trips and leaves printable ASCII alone', () => {
    for (const s of ['plain: text (ok)', '100% sure', 'ünïcødé 中文', 'line\nbreak']) assert.equal(decodeGrpcMessage(encodeGrpcMessage(s)), s);
    assert.equal(encodeGrpcMessage('a b:c'), 'a b:c');
    assert.equal(decodeGrpcMessage(encodeURI('grpc-js sends spaces as %20')), 'grpc-js sends spaces as %20');
  });
});

describe('join token', () => {
  it('matches only the exact token, and never shows it', () => {
    const token = new JoinToken('s3cret-token-0123456789');
    assert.ok(token.matches('Bearer s3cret-token-0123456789'));
    for (const wrong of [undefined, '', 's3cret-token-0123456789', 'Bearer s3cret-token-012345678', 'Bearer s3cret-token-01234567890', 'Basic s3cret-token-0123456789']) assert.equal(token.matches(wrong), false, String(wrong));
    assert.doesNotMatch(`${token} ${JSON.stringify({ token })}`, /s3cret/);
  });

  it('comes from a file or an environment variable, with errors that say what to do', () => {
    const dir = mkdtempSync(join(tmpdir(), 'token-'));
    try {
      writeFileSync(join(dir, 'token'), 'from-a-file-0123456789\n');
      assert.ok(JoinToken.fromEnvironment({ COMM_TOKEN_FILE: join(dir, 'token'), COMM_TOKEN: 'ignored-when-a-file-is-named' }).matches('Bearer from-a-file-0123456789'));
      assert.ok(JoinToken.fromEnvironment({ COMM_TOKEN: 'from-the-environment-01' }).matches('Bearer from-the-environment-01'));
      assert.throws(() => JoinToken.fromEnvironment({}), (e: unknown) => e instanceof AuthConfigError && /set COMM_TOKEN_FILE/.test(e.message));
      assert.throws(() => JoinToken.fromEnvironment({ COMM_TOKEN_FILE: join(dir, 'missing') }), /cannot read the join token file .*ENOENT/);
      assert.throws(() => new JoinToken('short'), /at least 16 characters/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
