import { NamePatterns, norm, type ParamStep, type UpdateWrapper } from '../rule.js';

/** Keeps a tiny learning rate from blowing the ratio up (bert4keras clips lr to K.epsilon()). */
const LR_FLOOR = 1e-7;

/**
 * LAMB's trust ratio: dx = theta_new - theta; theta_new = theta + dx * ||theta|| / ||dx / lr||,
 * with ratio 1 when either norm is 0. dx includes every piece written before this one
 * (weight decay, when it comes first, as in LAMB).
 */
export class LayerAdaptation implements UpdateWrapper {
  readonly type = 'layerAdaptation';
  private readonly excluded: NamePatterns;

  constructor(exclude: readonly string[] = []) {
    this.excluded = new NamePatterns(exclude);
  }

  /** The trust ratio for a parameter and its proposed change (exported for tests and logging). */
  static ratio(value: Float32Array, proposed: Float32Array, lr: number): number {
    const lrClipped = Math.min(Math.max(lr, LR_FLOOR), 1e10);
    let dxSquares = 0;
    for (let i = 0; i < value.length; i++) {
      const d = (proposed[i]! - value[i]!) / lrClipped;
      dxSquares += d * d;
    }
    const valueNorm = norm(value);
    const dxNorm = Math.sqrt(dxSquares);
    return valueNorm > 0 && dxNorm > 0 ? valueNorm / dxNorm : 1;
  }

  update(p: ParamStep, inner: () => void): void {
    inner();
    if (this.excluded.matches(p.name)) return;
    const { value, proposed } = p;
    const ratio = LayerAdaptation.ratio(value, proposed, p.lr);
    if (ratio === 1) return;
    for (let i = 0; i < value.length; i++) proposed[i] = value[i]! + (proposed[i]! - value[i]!) * ratio;
  }
}
