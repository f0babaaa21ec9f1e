import { sizeOf } from './parameters.js';

/** One optimizer slot of one parameter, declared before it exists. */
export interface SlotSpec {
  /** `<component>/<slot>`, e.g. `adafactor/vr`, `lookahead/slow`. */
  readonly name: string;
  readonly shape: readonly number[];
  /** Initial contents: zeros, or a copy of the parameter (Lookahead's slow weights). */
  readonly init: 'zeros' | 'parameter';
}

export interface Slot {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

/** A named tensor of optimizer state: `<parameter>#<component>/<slot>`. */
export interface NamedArray {
  readonly name: string;
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

export function slotTensorName(param: string, slot: string): string {
  return `${param}#${slot}`;
}

export function slotBytes(specs: readonly SlotSpec[]): number {
  return specs.reduce((n, s) => n + 4 * sizeOf(s.shape), 0);
}

/** Every slot of every parameter, by parameter name then slot name. */
export class SlotStore {
  private readonly byParam = new Map<string, Map<string, Slot>>();

  of(param: string): Map<string, Slot> | undefined {
    return this.byParam.get(param);
  }

  /** What is wrong with `param`'s existing slots against the declaration, if anything (none yet is fine). */
  problemWith(param: string, specs: readonly SlotSpec[]): string | undefined {
    const existing = this.byParam.get(param);
    if (!existing) return undefined;
    if (existing.size !== specs.length || specs.some((s) => !existing.has(s.name))) {
      const want = specs.map((s) => s.name).join(', ') || 'none';
      const have = [...existing.keys()].join(', ') || 'none';
      return `optimizer state of ${param} has slots [${have}] but this optimizer needs [${want}]: the state was saved by a differently configured optimizer`;
    }
    for (const s of specs) {
      const slot = existing.get(s.name)!;
      if (slot.shape.length !== s.shape.length || slot.shape.some((d, i) => d !== s.shape[i])) {
        return `optimizer slot ${slotTensorName(param, s.name)} has shape [${slot.shape.join(', ')}], expected [${s.shape.join(', ')}]`;
      }
    }
    return undefined;
  }

  /**
   * `param`'s slots, created on first sight (from `value` where the spec asks for the
   * parameter). Call `problemWith` first: existing slots are returned as they are.
   */
  ensure(param: string, specs: readonly SlotSpec[], value: Float32Array): Map<string, Slot> {
    const existing = this.byParam.get(param);
    if (existing) return existing;
    const created = new Map<string, Slot>();
    for (const s of specs) {
      const data = s.init === 'parameter' ? new Float32Array(value) : new Float32Array(sizeOf(s.shape));
      created.set(s.name, { shape: [...s.shape], data });
    }
    this.byParam.set(param, created);
    return created;
  }

  paramNames(): string[] {
    return [...this.byParam.keys()];
  }

  bytes(): number {
    let n = 0;
    for (const slots of this.byParam.values()) for (const s of slots.values()) n += s.data.byteLength;
    return n;
  }

  toArrays(): NamedArray[] {
    const out: NamedArray[] = [];
    for (const [param, slots] of this.byParam) {
      for (const [name, s] of slots) out.push({ name: slotTensorName(param, name), shape: [...s.shape], data: new Float32Array(s.data) });
    }
    return out;
  }

  /**
   * Replaces the whole store with `arrays` (copied); they are matched against the
   * parameters at the next step. Returns what is wrong with them, if anything (the store is then unchanged).
   */
  load(arrays: readonly NamedArray[]): string | undefined {
    for (const a of arrays) {
      const cut = a.name.lastIndexOf('#');
      if (cut <= 0 || cut === a.name.length - 1) return `optimizer state tensor "${a.name}" is not named <parameter>#<component>/<slot>`;
      if (a.data.length !== sizeOf(a.shape)) return `optimizer state tensor ${a.name} has ${a.data.length} values for shape [${a.shape.join(', ')}]`;
    }
    this.byParam.clear();
    for (const a of arrays) {
      const cut = a.name.lastIndexOf('#');
      const param = a.name.slice(0, cut);
      let slots = this.byParam.get(param);
      if (!slots) this.byParam.set(param, (slots = new Map()));
      slots.set(a.name.slice(cut + 1), { shape: [...a.shape], data: new Float32Array(a.data) });
    }
    return undefined;
  }
}
