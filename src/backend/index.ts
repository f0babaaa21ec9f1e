import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
// tfjs-core's Node bundle registers no gradient functions; tfjs-layers' bundle does
import '@tensorflow/tfjs-layers';
import { installCpuKernelFixes } from './cpu-kernels.js';
import { installWasmKernelFixes } from './wasm-kernels.js';
import { modelKernelsFused } from './wasm/simd-module.js';

export type BackendChoice = 'auto' | 'tensorflow' | 'wasm' | 'cpu';
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'tensorflow', 'wasm', 'cpu'];

export interface SelectedBackend {
  name: 'tensorflow' | 'wasm' | 'cpu';
  /** One line for the user: what runs and why. */
  description: string;
}

/** Native TensorFlow bindings are optional peers: the GPU build first, then the CPU build. */
const NATIVE_PACKAGES = ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'] as const;

async function loadNative(): Promise<string | undefined> {
  for (const pkg of NATIVE_PACKAGES) {
    try {
      await import(pkg);
      if (tf.findBackendFactory('tensorflow')) return pkg;
    } catch {
      // not installed (or its native library failed to load): try the next one
    }
  }
  return undefined;
}

async function activate(name: 'tensorflow' | 'wasm' | 'cpu'): Promise<boolean> {
  const ok = await tf.setBackend(name);
  if (ok) await tf.ready();
  return ok;
}

/**
 * Selects and initialises the tfjs backend. `auto` takes native TensorFlow if the user
 * installed it, else wasm (with our kernel fixes), else cpu.
 */
export async function selectBackend(choice: BackendChoice = 'auto'): Promise<SelectedBackend> {
  if (!BACKEND_CHOICES.includes(choice)) {
    throw new Error(`unknown backend "${String(choice)}"; use one of ${BACKEND_CHOICES.join(', ')}`);
  }
  tf.enableProdMode();
  if (choice === 'tensorflow' || choice === 'auto') {
    const pkg = await loadNative();
    if (pkg && (await activate('tensorflow'))) {
      return { name: 'tensorflow', description: `tensorflow (native, from ${pkg})` };
    }
    if (choice === 'tensorflow') {
      throw new Error(
        'backend "tensorflow" needs @tensorflow/tfjs-node-gpu or @tensorflow/tfjs-node (4.22.0) installed next to this package; ' +
          'install one, or use --backend wasm',
      );
    }
  }
  if (choice === 'wasm' || choice === 'auto') {
    try {
      if (await activate('wasm')) {
        installWasmKernelFixes();
        return {
          name: 'wasm',
          description: `wasm (SIMD ${tf.env().getBool('WASM_HAS_SIMD_SUPPORT') ? 'on' : 'off'}, products ${modelKernelsFused() ? 'with fused multiply-adds' : 'without fused multiply-adds (this Node compiles no relaxed SIMD)'}, one thread; run one worker per core)`,
        };
      }
    } catch (err) {
      if (choice === 'wasm') throw new Error(`backend "wasm" failed to initialise: ${(err as Error).message}`);
    }
    if (choice === 'wasm') throw new Error('backend "wasm" failed to initialise');
  }
  if (!(await activate('cpu'))) throw new Error('backend "cpu" failed to initialise');
  installCpuKernelFixes();
  return { name: 'cpu', description: 'cpu (plain JavaScript; about 30x slower than wasm: for tests and debugging)' };
}
