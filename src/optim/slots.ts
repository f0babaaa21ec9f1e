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

  /**
   * Makes sure `param` has exactly the declared slots: creates them all on first sight
   * (from `value` where the spec asks for the parameter), and rejects restored state
   * whose slots do not match the declaration.
   */
  ensure(param: string, specs: readonly SlotSpec[], value: Float32Array): Map<string, Slot> {
    const existing = this.byParam.get(param);
    if (existing) {
      if (existing.size !== specs.length || specs.some((s) => !existing.has(s.name))) {
        const want = specs.map((s) => s.name).join(', ') || 'none';
        const have = [...existing.keys()].join(', ') || 'none';
        throw new Error(`optimizer state of ${param} has slots [${have}] but this optimizer needs [${want}]: the state was saved by a differently configured optimizer`);
      }
      for (const s of specs) {
        const slot = existing.get(s.name)!;
        if (slot.shape.length !== s.shape.length || slot.shape.some((d, i) => d !== s.shape[i])) {
          throw new Error(`optimizer slot ${slotTensorName(param, s.name)} has shape [${slot.shape.join(', ')}], expected [${s.shape.join(', ')}]`);
        }
      }
      return existing;
    }
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

  /** Replaces the whole store with `arrays` (copied); shapes are checked when a parameter is next updated. */
  load(arrays: readonly NamedArray[]): void {
    this.byParam.clear();
    for (const a of arrays) {
      const cut = a.name.indexOf('#');
      if (cut <= 0 || cut === a.name.length - 1) throw new Error(`optimizer state tensor "${a.name}" is not named <parameter>#<component>/<slot>`);
      if (a.data.length !== sizeOf(a.shape)) throw new Error(`optimizer state tensor ${a.name} has ${a.data.length} values for shape [${a.shape.join(', ')}]`);
      const param = a.name.slice(0, cut);
      let slots = this.byParam.get(param);
      if (!slots) this.byParam.set(param, (slots = new Map()));
      slots.set(a.name.slice(cut + 1), { shape: [...a.shape], data: new Float32Array(a.data) });
    }
  }
}
