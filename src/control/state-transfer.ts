/**
 * A replica's state (trainable weights and optimizer state) as named float32 arrays, cut
 * into StateChunk messages and put back together: how a worker hands its state to the
 * coordinator for a checkpoint, and how the coordinator restores workers from one.
 *
 * The chunks of one state, in order: `meta` (JSON: every array's name and shape, the
 * optimizer's counters), then every array's bytes in the order meta lists them.
 */
import type { Float32Tensor } from '../checkpoint/safetensors.js';
import { OPTIMIZER_STATE_FORMAT, type OptimizerState } from '../optim/optimizer.js';
import type { StateChunk } from './messages.js';

/** What a checkpoint holds of a replica. */
export interface ReplicaState {
  readonly params: readonly Float32Tensor[];
  readonly optimizer: OptimizerState;
}

interface Meta {
  params: { name: string; shape: number[] }[];
  optimizer: { format: string; components: string[]; iterations: number; microSteps: number; slots: { name: string; shape: number[] }[] };
}

const CHUNK_BYTES = 1 << 20;

export class StateTransferError extends Error {
  override name = 'StateTransferError';
}

/** The chunks of `state`, each at most 1 MiB of array data. */
export function* stateChunks(state: ReplicaState, header: { workerId: number; generation: number; step: number }): Generator<StateChunk> {
  const meta: Meta = {
    params: state.params.map((p) => ({ name: p.name, shape: [...p.shape] })),
    optimizer: {
      format: state.optimizer.format,
      components: [...state.optimizer.components],
      iterations: state.optimizer.iterations,
      microSteps: state.optimizer.microSteps,
      slots: state.optimizer.slots.map((s) => ({ name: s.name, shape: [...s.shape] })),
    },
  };
  const metaBytes = Buffer.from(JSON.stringify(meta));
  yield { ...header, name: 'meta', offset: 0, total: metaBytes.length, data: metaBytes };
  const arrays = [...state.params.map((p) => ({ name: `param/${p.name}`, data: p.data })), ...state.optimizer.slots.map((s) => ({ name: `slot/${s.name}`, data: s.data }))];
  for (const { name, data } of arrays) {
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    if (bytes.length === 0) yield { ...header, name, offset: 0, total: 0, data: Buffer.alloc(0) };
    for (let offset = 0; offset < bytes.length; offset += CHUNK_BYTES) {
      yield { ...header, name, offset, total: bytes.length, data: bytes.subarray(offset, Math.min(bytes.length, offset + CHUNK_BYTES)) };
    }
  }
}

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/**
 * Puts the chunks of one state back together, checking each against the meta (names,
 * offsets in order, sizes); `complete` once every array is whole.
 */
export class StateAssembler {
  private meta: Meta | undefined;
  private readonly arrays = new Map<string, { data: Float32Array; filled: number; shape: number[] }>();
  private remaining = Infinity;

  constructor(readonly source: string) {}

  get complete(): boolean {
    return this.remaining === 0;
  }

  add(chunk: StateChunk): void {
    const fail = (why: string) => new StateTransferError(`state from ${this.source}: ${why}`);
    if (!this.meta) {
      if (chunk.name !== 'meta') throw fail(`the first chunk is ${JSON.stringify(chunk.name)}, expected meta`);
      let meta: Meta;
      try {
        meta = JSON.parse(Buffer.from(chunk.data).toString('utf8')) as Meta;
      } catch {
        throw fail('its meta is not JSON');
      }
      if (!Array.isArray(meta.params) || !meta.optimizer || !Array.isArray(meta.optimizer.slots)) throw fail('its meta lacks params or optimizer slots');
      if (meta.optimizer.format !== OPTIMIZER_STATE_FORMAT) throw fail(`its optimizer state has format ${String(meta.optimizer.format)}, expected ${OPTIMIZER_STATE_FORMAT}`);
      this.meta = meta;
      for (const p of meta.params) this.arrays.set(`param/${p.name}`, { data: new Float32Array(size(p.shape)), filled: 0, shape: p.shape });
      for (const s of meta.optimizer.slots) this.arrays.set(`slot/${s.name}`, { data: new Float32Array(size(s.shape)), filled: 0, shape: s.shape });
      this.remaining = [...this.arrays.values()].filter((a) => a.data.length > 0).length;
      return;
    }
    const array = this.arrays.get(chunk.name);
    if (!array) throw fail(`unexpected array ${JSON.stringify(chunk.name)}`);
    const bytes = new Uint8Array(array.data.buffer);
    if (chunk.total !== bytes.length || chunk.offset !== array.filled || chunk.offset + chunk.data.length > bytes.length) {
      throw fail(`chunk of ${chunk.name} at byte ${chunk.offset} (of ${chunk.total}) does not continue it (${array.filled} of ${bytes.length} bytes received)`);
    }
    bytes.set(chunk.data, chunk.offset);
    array.filled += chunk.data.length;
    if (array.filled === bytes.length && bytes.length > 0) this.remaining--;
  }

  state(): ReplicaState {
    if (!this.meta || !this.complete) throw new StateTransferError(`state from ${this.source} is incomplete`);
    const take = (name: string) => this.arrays.get(name)!;
    return {
      params: this.meta.params.map((p) => ({ name: p.name, shape: p.shape, data: take(`param/${p.name}`).data })),
      optimizer: {
        format: OPTIMIZER_STATE_FORMAT,
        components: this.meta.optimizer.components,
        iterations: this.meta.optimizer.iterations,
        microSteps: this.meta.optimizer.microSteps,
        slots: this.meta.optimizer.slots.map((s) => ({ name: s.name, shape: s.shape, data: take(`slot/${s.name}`).data })),
      },
    };
  }
}
