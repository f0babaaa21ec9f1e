import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
// tfjs-core's node bundle registers no gradients; tfjs-layers' bundle
// registers all of them into the shared global registry.
import '@tensorflow/tfjs-layers';

import {
  ALL_WASM_KERNEL_FIXES,
  installWasmKernelFixes,
  installedWasmKernelFixes,
  uninstallWasmKernelFixes,
} from '../src/backend/wasm-kernels.js';
import { dropoutRuns, FUSED_KERNEL, hasFusedKernel } from '../src/backend/fused-kernels.js';
import { fmaKernelModule, kernelModule, modelKernelsFused } from '../src/backend/wasm/simd-module.js';
import { activation } from '../src/model/layers/activations.js';
import { seededDropout } from '../src/model/layers/base.js';
import { LayerNorm } from '../src/model/layers/layer-norm.js';
import { sparseSoftmaxCrossEntropy } from '../src/train/loss.js';

// ---------------------------------------------------------------------------
// helpers

/** Deterministic data in [-1, 1): tests must not depend on Math.random. */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  };
}

function randomValues(n: number, seed: number): Float32Array {
  const next = lcg(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = next();
  return out;
}

interface Result { shape: number[]; dtype: tf.DataType; values: number[] }

function read(t: tf.Tensor): Result {
  return { shape: t.shape.slice(), dtype: t.dtype, values: Array.from(t.dataSync()) };
}

/** Runs `fn` on cpu, then on wasm (with whatever kernels are registered there). */
async function onCpuAndWasm(fn: () => tf.Tensor | tf.Tensor[]): Promise<{ cpu: Result[]; wasm: Result[] }> {
  const run = (): Result[] => {
    let results: Result[] = [];
    tf.tidy(() => {
      const r = fn();
      results = (Array.isArray(r) ? r : [r]).map(read);
    });
    return results;
  };
  await tf.setBackend('cpu');
  const cpu = run();
  await tf.setBackend('wasm');
  const wasm = run();
  return { cpu, wasm };
}

function assertClose(actual: Result, expected: Result, what: string, tol = 1e-4): void {
  assert.deepEqual(actual.shape, expected.shape, `${what}: shape`);
  assert.equal(actual.values.length, expected.values.length, `${what}: size`);
  for (let i = 0; i < actual.values.length; i++) {
    const a = actual.values[i]!;
    const e = expected.values[i]!;
    if (!(Math.abs(a - e) <= tol * Math.max(1, Math.abs(e)))) {
      assert.fail(`${what}: element ${i}: wasm ${a} vs expected ${e}`);
    }
  }
}

async function assertSameOnBoth(fn: () => tf.Tensor | tf.Tensor[], what: string): Promise<void> {
  const { cpu, wasm } = await onCpuAndWasm(fn);
  assert.equal(wasm.length, cpu.length);
  cpu.forEach((c, i) => assertClose(wasm[i]!, c, `${what}[${i}]`));
}

function wasmBackendHeapBytes(): number {
  return (tf.backend() as unknown as { wasm: { HEAPU8: Uint8Array } }).wasm.HEAPU8.length;
}

function memorySnapshot(): { numTensors: number; numBytes: number; numDataBuffers: number; numDataIds: number } {
  const m = tf.memory();
  return {
    numTensors: m.numTensors,
    numBytes: m.numBytes,
    numDataBuffers: m.numDataBuffers,
    numDataIds: tf.backend().numDataIds(),
  };
}

function gatherGrad(params: tf.Tensor, indices: tf.Tensor, axis: number): tf.Tensor {
  const weights = tf.tensor(randomValues(tf.util.sizeFromShape(
      tf.gather(params, indices, axis).shape), 99), tf.gather(params, indices, axis).shape);
  return tf.grad((p: tf.Tensor) => tf.sum(tf.mul(tf.gather(p, indices, axis), weights)))(params);
}

// ---------------------------------------------------------------------------

const stockBatchMatMul = { func: undefined as unknown };
const stockIdentity = { func: undefined as unknown };

before(async () => {
  await tf.setBackend('wasm');
  await tf.ready();
  stockBatchMatMul.func = tf.getKernel('BatchMatMul', 'wasm')?.kernelFunc;
  stockIdentity.func = tf.getKernel('Identity', 'wasm')?.kernelFunc;
  installWasmKernelFixes();
});

after(() => {
  uninstallWasmKernelFixes();
});

describe('UnsortedSegmentSum', () => {
  test('rank-2 x with repeated and out-of-range ids matches cpu', async () => {
    await assertSameOnBoth(() => tf.unsortedSegmentSum(
        tf.tensor2d(randomValues(6 * 4, 1), [6, 4]),
        tf.tensor1d([0, 2, 2, 5, -1, 2], 'int32'), 4), 'rank2');
  });

  test('rank-3 and rank-1 x match cpu', async () => {
    await assertSameOnBoth(() => [
      tf.unsortedSegmentSum(tf.tensor3d(randomValues(5 * 3 * 2, 2), [5, 3, 2]),
          tf.tensor1d([3, 0, 3, 3, 1], 'int32'), 5),
      tf.unsortedSegmentSum(tf.tensor1d(randomValues(7, 3)), tf.tensor1d([1, 1, 0, 6, 2, 9, 1], 'int32'), 3),
    ], 'rank3/rank1');
  });

  test('int32 x keeps int32 (cpu returns float32 values; compare values)', async () => {
    const { cpu, wasm } = await onCpuAndWasm(() => tf.unsortedSegmentSum(
        tf.tensor2d([[1, 2], [3, 4], [5, 6], [7, 8]], [4, 2], 'int32'),
        tf.tensor1d([1, 1, 7, 0], 'int32'), 3));
    assert.equal(wasm[0]!.dtype, 'int32');
    assert.deepEqual(wasm[0]!.values, [7, 8, 4, 6, 0, 0]);
    assertClose(wasm[0]!, cpu[0]!, 'int32');
  });

  test('multi-dimensional segmentIds follow TF (out = [numSegments, ...x.shape[ids.rank:]])', () => {
    // cpu gets this case wrong, so the expectation is written out by hand.
    const x = tf.tensor3d([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [2, 3, 2]);
    const ids = tf.tensor2d([[0, 1, 1], [2, 0, 5]], [2, 3], 'int32');
    // The op's typings say 1D; the kernel (like TF) accepts any prefix shape.
    const out = tf.unsortedSegmentSum(x, ids as unknown as tf.Tensor1D, 3);
    assert.deepEqual(out.shape, [3, 2]);
    assert.deepEqual(Array.from(out.dataSync()), [1 + 9, 2 + 10, 3 + 5, 4 + 6, 7, 8]);
    tf.dispose([x, ids, out]);
  });

  test('gradient of gather (embedding lookup) on wasm equals cpu', async () => {
    await assertSameOnBoth(() => {
      const table = tf.tensor2d(randomValues(10 * 6, 4), [10, 6]);
      const idx = tf.tensor2d([[1, 3, 3], [9, 0, 1]], [2, 3], 'int32');
      return [gatherGrad(table, idx, 0), gatherGrad(table, tf.tensor1d([5, 0, 5, 2], 'int32'), 1)];
    }, 'gather grad');
  });
});

describe('BatchMatMul', () => {
  /** Builds a (outerA + [M,K]) x b (outerB + [K,N]) with the given transposes. */
  function matMulCase(outerA: number[], outerB: number[], m: number, k: number, n: number,
      ta: boolean, tb: boolean, seed: number): tf.Tensor {
    const aShape = [...outerA, ...(ta ? [k, m] : [m, k])];
    const bShape = [...outerB, ...(tb ? [n, k] : [k, n])];
    const a = tf.tensor(randomValues(tf.util.sizeFromShape(aShape), seed), aShape);
    const b = tf.tensor(randomValues(tf.util.sizeFromShape(bShape), seed + 1), bShape);
    return tf.matMul(a, b, ta, tb);
  }

  const layouts: Array<[string, number[], number[]]> = [
    ['2D', [], []],
    ['3D same batch', [3], [3]],
    ['3D x 2D broadcast', [3], []],
    ['2D x 3D broadcast', [], [3]],
    ['4D', [2, 3], [2, 3]],
    ['batch-1 a, batched b', [1], [4]],
    ['batched a, batch-1 b', [2, 2], [1]],
  ];
  const transposes: Array<[boolean, boolean]> = [[false, false], [true, false], [false, true], [true, true]];

  test('all layouts x transposes, odd sizes (M=5,K=7,N=3), match cpu', async () => {
    let seed = 10;
    for (const [name, oa, ob] of layouts) {
      await assertSameOnBoth(() => transposes.map(([ta, tb]) => matMulCase(oa, ob, 5, 7, 3, ta, tb, seed)),
          `${name} (tA,tB)=${JSON.stringify(transposes)}`);
      seed += 2;
    }
  });

  test('larger 64x96x80, 2D and batched, all transposes, match cpu', async () => {
    await assertSameOnBoth(() => transposes.flatMap(([ta, tb]) => [
      matMulCase([], [], 64, 96, 80, ta, tb, 50),
      matMulCase([2], [2], 64, 96, 80, ta, tb, 60),
      matMulCase([2], [], 64, 96, 80, ta, tb, 70),
    ]), 'large');
  });

  test('sizes that cross the GEMM cache blocks (M 70 > 64, K 300 > 256, N 270 > 256), match cpu', async () => {
    await assertSameOnBoth(() => transposes.flatMap(([ta, tb]) => [
      matMulCase([], [], 70, 300, 270, ta, tb, 90),
      matMulCase([2], [], 9, 300, 13, ta, tb, 92),
    ]), 'blocked');
  });

  test('edge tiles only: M, N, K of 1 to 9, all transposes, match cpu', async () => {
    const sizes = [1, 2, 3, 5, 8, 9];
    await assertSameOnBoth(() => {
      let seed = 200; // runs once per backend: both must draw the same operands
      return sizes.flatMap((m) => sizes.flatMap((n) => [1, 4, 7].flatMap((k) =>
        transposes.map(([ta, tb]) => matMulCase([], [], m, k, n, ta, tb, seed++)))));
    }, 'edges');
  });

  test('a few rows by a long operand, transposed or not (the MLM head of a short piece: no packing), odd K and N, match cpu', async () => {
    await assertSameOnBoth(() => [1, 2, 7, 8, 9].flatMap((m) => [3, 259, 300].flatMap((k) =>
      [false, true].flatMap((tb) => [1001, 256, 7].map((n) => matMulCase([], [], m, k, n, false, tb, 300 + m + k + n))))), 'few rows');
  });

  test('mixed broadcast [2,1] x [3] equals per-slice products', () => {
    // cpu broadcasts batches by index modulo, which is wrong for this shape,
    // so compare against explicit per-slice 2D products instead.
    const a = tf.tensor4d(randomValues(2 * 5 * 7, 80), [2, 1, 5, 7]);
    const b = tf.tensor3d(randomValues(3 * 3 * 7, 81), [3, 3, 7]);
    const out = tf.matMul(a, b, false, true);
    assert.deepEqual(out.shape, [2, 3, 5, 3]);
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < 3; j++) {
        const expected = tf.tidy(() => tf.matMul(
            tf.reshape(tf.slice(a, [i, 0, 0, 0], [1, 1, 5, 7]), [5, 7]),
            tf.reshape(tf.slice(b, [j, 0, 0], [1, 3, 7]), [3, 7]), false, true));
        const got = tf.tidy(() => tf.reshape(tf.slice(out, [i, j, 0, 0], [1, 1, 5, 3]), [5, 3]));
        assertClose(read(got), read(expected), `slice ${i},${j}`);
        tf.dispose([expected, got]);
      }
    }
    tf.dispose([a, b, out]);
  });

  test('a reshaped alias of a cached b (other K) is computed correctly', () => {
    // Stock wasm aborts the module here (stale XNNPACK operator keyed by id).
    const b = tf.tensor2d(Array.from({ length: 24 }, (_, i) => i), [4, 6]);
    const r1 = tf.matMul(tf.ones([2, 4]), b);
    assert.deepEqual(Array.from(r1.dataSync()).slice(0, 6), [36, 40, 44, 48, 52, 56]);
    const c = tf.reshape(b, [6, 4]);
    const r2 = tf.matMul(tf.ones([2, 6]), c);
    assert.deepEqual(Array.from(r2.dataSync()).slice(0, 4), [60, 66, 72, 78]);
    tf.dispose([b, r1, c, r2]);
  });

  test('non-float32 keeps the stock error', () => {
    const a = tf.tensor2d([1, 2, 3, 4], [2, 2], 'int32');
    assert.throws(() => tf.matMul(a, a), /non-float32/);
    a.dispose();
  });

  test('no tensor, data or operator leak', () => {
    const run = (): void => {
      tf.tidy(() => {
        for (const [ta, tb] of transposes) {
          matMulCase([], [], 5, 7, 3, ta, tb, 1);
          matMulCase([4], [4], 128, 128, 128, ta, tb, 2);
          matMulCase([4], [], 16, 8, 4, ta, tb, 3);
        }
      });
    };
    run();
    const before = memorySnapshot();
    const heapBefore = wasmBackendHeapBytes();
    // A leak of per-call state (a packed copy of b is 64 KiB here) over
    // 20 rounds x 8 batched calls would be >10 MiB and grow the heap.
    for (let i = 0; i < 20; i++) run();
    assert.deepEqual(memorySnapshot(), before);
    assert.equal(wasmBackendHeapBytes(), heapBefore, 'wasm heap grew: something leaks');
  });
});

describe('fused multiply-adds (kernels-fma.wasm)', () => {
  interface GemmExports {
    gemm(m: number, n: number, k: number, a: number, sAi: number, sAk: number, b: number, sBk: number, sBj: number, c: number, ldc: number, scratch: number): void;
    scratchBytes(): number;
  }
  /** x86 Linux lists the instruction set's FMA among the CPU flags; elsewhere the test cannot tell whether it should see a difference. */
  function cpuHasFma(): boolean | undefined {
    if (process.platform !== 'linux' || process.arch !== 'x64') return undefined;
    return / fma( |$)/m.test(readFileSync('/proc/cpuinfo', 'utf8'));
  }

  test('the model\'s products run from it here, and equal the plain kernel\'s within float32 rounding of their sums, fused where the CPU has FMA', () => {
    assert.ok(modelKernelsFused(), 'kernels-fma.wasm compiles here (relaxed SIMD: Node 20 with the V8 flag simd-module.ts sets, Node 22 without)');
    const memory = new WebAssembly.Memory({ initial: 64 });
    const plain = new WebAssembly.Instance(kernelModule(), { env: { memory } }).exports as unknown as GemmExports;
    const fused = new WebAssembly.Instance(fmaKernelModule()!, { env: { memory } }).exports as unknown as GemmExports;
    const heap = new Float32Array(memory.buffer);
    // every path of the kernel: packed blocks (K past one block), few rows (dot products, row updates)
    const cases: Array<[string, number, number, number, boolean]> = [['packed', 70, 90, 300, false], ['few rows, B transposed', 3, 257, 300, true], ['few rows, B as is', 2, 300, 77, false]];
    let fusedSomewhere = false;
    for (const [what, M, N, K, bTransposed] of cases) {
      const a = 0;
      const b = a + M * K;
      const c0 = b + K * N;
      const c1 = c0 + M * N;
      const scratch = (c1 + M * N) * 4;
      heap.set(randomValues(M * K, M), a);
      heap.set(randomValues(K * N, N), b);
      const [sBk, sBj] = bTransposed ? [1, K] : [N, 1];
      plain.gemm(M, N, K, a * 4, K, 1, b * 4, sBk, sBj, c0 * 4, N, scratch);
      fused.gemm(M, N, K, a * 4, K, 1, b * 4, sBk, sBj, c1 * 4, N, scratch);
      for (let i = 0; i < M; i++) {
        for (let j = 0; j < N; j++) {
          let absSum = 0;
          for (let k = 0; k < K; k++) absSum += Math.abs(heap[a + i * K + k]! * heap[b + k * sBk + j * sBj]!);
          const [x, y] = [heap[c0 + i * N + j]!, heap[c1 + i * N + j]!];
          // each of the two sums of K products rounds at most 2K times by 2^-24 of the partial sums
          assert.ok(Math.abs(x - y) <= 4 * K * 2 ** -24 * absSum, `${what}: C[${i},${j}] ${y} fused vs ${x} plain`);
          if (x !== y) fusedSomewhere = true;
        }
      }
    }
    if (cpuHasFma() === true) assert.ok(fusedSomewhere, 'every product equals the plain kernel\'s bit for bit on a CPU with FMA: the multiply-adds were not fused');
  });
});

describe('GeluErf (fused, wasm) against the tfjs-ops GELU (cpu)', () => {
  // 1027 values: not a multiple of the SIMD width, so the tail path runs too
  const values = Float32Array.from(randomValues(1027, 120), (v, i) => (i % 50 === 0 ? v * 40 : v * 6));
  values[7] = 0;
  values[8] = -0;
  values[9] = 30;
  values[10] = -30;
  const upstream = randomValues(1027, 121);

  test('wasm has the kernel and cpu does not, so the two paths are compared', async () => {
    await tf.setBackend('wasm');
    assert.ok(hasFusedKernel(FUSED_KERNEL.geluErf));
    await tf.setBackend('cpu');
    assert.ok(!hasFusedKernel(FUSED_KERNEL.geluErf));
  });

  test('values and gradients match', async () => {
    await assertSameOnBoth(() => {
      const gelu = activation('gelu');
      const x = tf.tensor1d(values);
      const dy = tf.tensor1d(upstream);
      const dx = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(gelu(t), dy)))(x);
      return [gelu(tf.reshape(x, [1027, 1])), dx];
    }, 'gelu');
  });

  test('closed form at known points', async () => {
    await tf.setBackend('wasm');
    const gelu = activation('gelu');
    // x * Phi(x), Phi from float64 erf tables: Phi(1) = 0.841344746, Phi(-2) = 0.022750132
    const got = tf.tidy(() => Array.from(gelu(tf.tensor1d([1, -2, 0, 30, -30])).dataSync()));
    const expected = [0.841344746, -2 * 0.022750132, 0, 30, -0];
    got.forEach((g, i) => assert.ok(Math.abs(g - expected[i]!) < 3e-7, `gelu(${[1, -2, 0, 30, -30][i]}) = ${g}`));
  });
});

describe('SeededDropout (fused, wasm) against the tfjs-ops dropout (cpu)', () => {
  test('the same mask bit for bit, forward and backward, with a tail', async () => {
    await tf.setBackend('wasm');
    assert.ok(hasFusedKernel(FUSED_KERNEL.seededDropout));
    const values = randomValues(4 * 1031 + 3, 130);
    const upstream = randomValues(values.length, 131);
    const { cpu, wasm } = await onCpuAndWasm(() => [0.1, 0.5, 0.9].flatMap((rate, r) => {
      const x = tf.tensor2d(values, [1, values.length]);
      const dy = tf.tensor2d(upstream, [1, values.length]);
      const f = (t: tf.Tensor): tf.Tensor => seededDropout(t, rate, 1000 + r, 0xdeadbeef);
      return [f(x), tf.grad((t: tf.Tensor) => tf.sum(tf.mul(f(t), dy)))(x)];
    }));
    assert.equal(wasm.length, 6);
    cpu.forEach((c, i) => assert.deepEqual(wasm[i], c, `result ${i}`));
    const dropped = cpu[0]!.values.filter((v) => v === 0).length / values.length;
    assert.ok(Math.abs(dropped - 0.1) < 0.02, `rate 0.1 dropped ${dropped}`);
  });

  test('an offset continues the stream: two halves with offsets draw the mask of the whole', async () => {
    const n = 1029;
    const halves = (): tf.Tensor[] => {
      const ones = tf.ones([2, n]);
      const whole = seededDropout(ones, 0.4, 5, 0x1234);
      const first = seededDropout(tf.ones([1, n]), 0.4, 5, 0x1234, 0);
      const second = seededDropout(tf.ones([1, n]), 0.4, 5, 0x1234, n);
      const shifted = seededDropout(tf.ones([1, n]), 0.4, 5, 0x1234, 1);
      return [whole, tf.concat([first, second], 0), shifted];
    };
    const { cpu, wasm } = await onCpuAndWasm(halves);
    assert.deepEqual(cpu[1]!.values, cpu[0]!.values, 'cpu: halves = whole');
    assert.deepEqual(wasm[1]!.values, wasm[0]!.values, 'wasm: halves = whole');
    assert.deepEqual(wasm[0]!.values, cpu[0]!.values, 'wasm = cpu');
    assert.notDeepEqual(cpu[2]!.values, cpu[0]!.values.slice(0, n), 'an offset of one draws another mask');
  });

  test('runs of a tensor counted over a longer shape start where the closed form says', () => {
    const [b, l, h] = [2, 3, 4];
    const rows = dropoutRuns([b, l, h], [b, 5, h]);
    assert.equal(rows.length, l * h, '[batch, length, hidden]: one run per sample');
    assert.deepEqual([...rows.starts], [0, 5 * h]);
    const probs = dropoutRuns([2, 2, 3, 3], [2, 2, 5, 5]);
    assert.equal(probs.length, 3, 'attention probabilities: one run per row');
    const expected: number[] = [];
    for (let s = 0; s < 2; s++) for (let head = 0; head < 2; head++) for (let i = 0; i < 3; i++) expected.push(((s * 2 + head) * 5 + i) * 5);
    assert.deepEqual([...probs.starts], expected);
    assert.deepEqual([...dropoutRuns([2, 3], [2, 3]).starts], [0], 'the same shape: one run');
    assert.throws(() => dropoutRuns([2, 6, 4], [2, 5, 4]), /no shorter axis/);
  });

  test('counted over a longer length, a shorter tensor draws the longer one\'s mask on its positions (cpu and wasm alike)', async () => {
    const masks = (): tf.Tensor[] => {
      const long = seededDropout(tf.ones([2, 3, 7, 7]), 0.5, 9, 0x77, 0);
      const short = seededDropout(tf.ones([2, 3, 4, 4]), 0.5, 9, 0x77, 0, [2, 3, 7, 7]);
      const own = seededDropout(tf.ones([2, 3, 4, 4]), 0.5, 9, 0x77, 0);
      return [tf.slice(long, [0, 0, 0, 0], [2, 3, 4, 4]), short, own];
    };
    const { cpu, wasm } = await onCpuAndWasm(masks);
    assert.deepEqual(cpu[1]!.values, cpu[0]!.values, 'cpu: the short tensor\'s mask is the corner of the long one\'s');
    assert.deepEqual(wasm[1]!.values, wasm[0]!.values, 'wasm: likewise');
    assert.deepEqual(wasm[1]!.values, cpu[1]!.values, 'wasm = cpu');
    assert.notDeepEqual(cpu[2]!.values, cpu[0]!.values, 'counted over its own shape, it draws another mask');
  });

  test('another seed or salt draws another mask', async () => {
    await tf.setBackend('wasm');
    const ones = tf.ones([4096]);
    const mask = (seed: number, salt: number): number[] => tf.tidy(() => Array.from(seededDropout(ones, 0.5, seed, salt).dataSync()));
    const first = mask(1, 7);
    assert.notDeepEqual(mask(2, 7), first);
    assert.notDeepEqual(mask(1, 8), first);
    assert.deepEqual(mask(1, 7), first);
    ones.dispose();
  });
});

describe('LayerNormalization (fused, wasm) against the tfjs-ops layer norm (cpu)', () => {
  for (const [rows, width] of [[6, 7], [33, 256], [2, 4]] as const) {
    test(`values and the gradients of x, gamma, beta match, rows ${rows} x width ${width}`, async () => {
      await assertSameOnBoth(() => {
        const layer = new LayerNorm({ name: `ln-${rows}-${width}`, epsilon: 1e-12 });
        // an offset and a spread per row, as residual streams have
        const x = tf.add(tf.mul(tf.tensor2d(randomValues(rows * width, 140), [rows, width]), 3), 0.5);
        layer.build([rows, width]);
        layer.setWeights([tf.add(1, tf.tensor1d(randomValues(width, 141))), tf.tensor1d(randomValues(width, 142))]);
        const dy = tf.tensor2d(randomValues(rows * width, 143), [rows, width]);
        const params = layer.trainableWeights.map((w) => w.read() as tf.Variable);
        const f = (input: tf.Tensor): tf.Tensor => layer.apply(input) as tf.Tensor;
        const { value, grads } = tf.variableGrads(() => tf.sum(tf.mul(f(x), dy)) as tf.Scalar, params);
        const dx = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(f(input), dy)))(x);
        const out = [f(x), dx, ...params.map((p) => grads[p.name]!), value];
        layer.weights.forEach((w) => w.dispose());
        return out;
      }, `layer norm ${rows}x${width}`);
    });
  }
});

describe('SoftmaxCrossEntropy (fused, wasm) against the tfjs-ops loss (cpu)', () => {
  for (const vocab of [1027, 40]) {
    test(`loss, accuracy and the logits' gradient match, vocab ${vocab}`, async () => {
      const rows = 9;
      const logits = Float32Array.from(randomValues(rows * vocab, 150), (v) => v * 8);
      // a row whose label's probability underflows: the reported loss is clamped, the gradient is not
      logits[3 * vocab + 5] = 200;
      const labels = Int32Array.from({ length: rows }, (_, i) => (i * 37) % vocab);
      const weights = randomValues(rows, 151);
      await assertSameOnBoth(() => {
        const x = tf.tensor2d(logits, [rows, vocab]);
        const l = tf.tensor1d(labels, 'int32');
        const w = tf.tensor1d(weights);
        const { lossSum, correct } = sparseSoftmaxCrossEntropy(x, l);
        // per-row weights reach the gradient through a weighted sum of per-row losses
        const dx = tf.grad((t: tf.Tensor) => {
          const perRow = tf.stack(Array.from({ length: rows }, (_, r) =>
            sparseSoftmaxCrossEntropy(tf.slice(t, [r, 0], [1, vocab]), tf.slice(l, [r], [1])).lossSum));
          return tf.sum(tf.mul(perRow, w));
        })(x);
        return [lossSum, correct, dx];
      }, `cross-entropy vocab ${vocab}`);
    });
  }

  test('a label outside the vocabulary is an error naming it', async () => {
    await tf.setBackend('wasm');
    const x = tf.zeros([2, 5]);
    const l = tf.tensor1d([1, 5], 'int32');
    assert.throws(() => sparseSoftmaxCrossEntropy(x, l), /label 5 at row 1 is outside the vocabulary \[0, 5\)/);
    tf.dispose([x, l]);
  });
});

describe('Identity', () => {
  test('clone shares data and refcounts dispose correctly', () => {
    const before = memorySnapshot();
    const x = tf.tensor2d([1, 2, 3, 4, 5, 6], [2, 3]);
    const y = tf.clone(x);
    assert.equal(y.dataId, x.dataId, 'clone shares the data id');
    const mid = memorySnapshot();
    assert.equal(mid.numTensors, before.numTensors + 2);
    assert.equal(mid.numDataBuffers, before.numDataBuffers + 1);
    assert.equal(mid.numBytes, before.numBytes + 2 * 6 * 4);
    x.dispose();
    assert.deepEqual(Array.from(y.dataSync()), [1, 2, 3, 4, 5, 6]);
    assert.equal(tf.memory().numTensors, before.numTensors + 1);
    y.dispose();
    assert.deepEqual(memorySnapshot(), before);
  });

  test('training step through saved clones matches cpu', async () => {
    await assertSameOnBoth(() => {
      const w = tf.tensor2d(randomValues(6 * 4, 7), [6, 4]);
      const x = tf.tensor2d(randomValues(3 * 6, 8), [3, 6]);
      const f = (wt: tf.Tensor): tf.Tensor => tf.sum(tf.square(tf.tanh(tf.matMul(x, wt))));
      return [tf.grad(f)(w), f(w)];
    }, 'grad');
  });
});

describe('Sum over leading axes', () => {
  test('column sums of rank 2, 3 and keepDims match cpu; other reductions still work', async () => {
    const x = (): tf.Tensor => tf.tensor(randomValues(4 * 6 * 5, 31), [4, 6, 5]);
    await assertSameOnBoth(() => [
      tf.sum(x(), 0),
      tf.sum(x(), [0, 1]),
      tf.sum(x(), [1, 0], true),
      tf.sum(tf.reshape(x(), [24, 5]), 0),
      tf.sum(x(), -1),
      tf.sum(x(), [0, 2]),
      tf.sum(x()),
      tf.sum(tf.cast(tf.reshape(x(), [24, 5]), 'int32'), 0),
    ], 'sum');
  });
  test('the bias gradient of a broadcast add matches cpu', async () => {
    await assertSameOnBoth(() => {
      const bias = tf.tensor(randomValues(7, 32), [7]);
      const x = tf.tensor(randomValues(3 * 9 * 7, 33), [3, 9, 7]);
      return tf.grad((b: tf.Tensor) => tf.sum(tf.square(tf.add(x, b))))(bias);
    }, 'bias grad');
  });
});

describe('GatherV2 rows', () => {
  test('row gathers (rank 1 and 2 indices, int32 tables) match cpu; other axes still work', async () => {
    const table = (): tf.Tensor => tf.tensor(randomValues(10 * 3 * 2, 41), [10, 3, 2]);
    await assertSameOnBoth(() => [
      tf.gather(table(), tf.tensor1d([9, 0, 3, 3], 'int32')),
      tf.gather(table(), tf.tensor2d([[1, 2], [8, 1]], [2, 2], 'int32')),
      tf.gather(tf.cast(tf.mul(table(), 100), 'int32'), tf.tensor1d([4, 2], 'int32')),
      tf.gather(table(), tf.tensor1d([2, 0], 'int32'), 1),
    ], 'gather');
  });
  test('an out-of-range index is an error, not garbage', async () => {
    await tf.setBackend('wasm');
    assert.throws(() => tf.tidy(() => tf.gather(tf.ones([3, 2]), tf.tensor1d([3], 'int32')).dataSync()), /index value 3 is not in \[0, 2\]/);
  });
});

describe('install / uninstall', () => {
  test('install is idempotent and does not warn', () => {
    const warnings: unknown[] = [];
    const orig = console.warn;
    console.warn = (...args: unknown[]) => { warnings.push(args); };
    try {
      installWasmKernelFixes();
      installWasmKernelFixes(['BatchMatMul']);
    } finally {
      console.warn = orig;
    }
    assert.deepEqual(warnings, []);
    assert.deepEqual(installedWasmKernelFixes(), [...ALL_WASM_KERNEL_FIXES]);
  });

  test('round trip restores stock kernels, reinstall works', async () => {
    await tf.setBackend('wasm');
    const table = tf.tensor2d(randomValues(8 * 3, 11), [8, 3]);
    const idx = tf.tensor1d([1, 1, 4], 'int32');

    uninstallWasmKernelFixes();
    assert.deepEqual(installedWasmKernelFixes(), []);
    assert.equal(tf.getKernel('UnsortedSegmentSum', 'wasm'), undefined);
    assert.equal(tf.getKernel('BatchMatMul', 'wasm')?.kernelFunc, stockBatchMatMul.func);
    assert.equal(tf.getKernel('Identity', 'wasm')?.kernelFunc, stockIdentity.func);
    assert.throws(() => tf.tidy(() => gatherGrad(table, idx, 0)));
    const copy = tf.clone(table);
    assert.notEqual(copy.dataId, table.dataId, 'stock Identity copies');
    const stockProduct = tf.matMul(table, table, true, false);
    const stockValues = Array.from(stockProduct.dataSync());
    tf.dispose([copy, stockProduct]);

    installWasmKernelFixes(['Identity']);
    assert.deepEqual(installedWasmKernelFixes(), ['Identity']);
    installWasmKernelFixes();
    assert.deepEqual(installedWasmKernelFixes(), [...ALL_WASM_KERNEL_FIXES]);
    const g = gatherGrad(table, idx, 0);
    assert.deepEqual(g.shape, [8, 3]);
    const fixedProduct = tf.matMul(table, table, true, false);
    assertClose(read(fixedProduct), { shape: [3, 3], dtype: 'float32', values: stockValues }, 'matmul');
    tf.dispose([g, fixedProduct, table, idx]);
  });
});
