/**
 * A constraint on what a decoder may generate (a prefix tree of allowed keys, a grammar...).
 * The searches (`beamSearch`, `sample`) keep one state per hypothesis: only `allowed` tokens
 * are scored (log-probabilities renormalized among them, as bert4keras/KgCLUE do), the ending
 * `[SEP]` only where `canEnd`, and a hypothesis whose token `advance` refuses is dropped: a
 * beam that leaves the constraint cannot exist.
 */
export interface DecodeConstraint<S> {
  /** The state before the first generated token. */
  start(): S;
  /** Tokens that may come next; null: any token. */
  allowed(state: S): Int32Array | null;
  /** The state after `token`; undefined: `token` is not allowed here. */
  advance(state: S, token: number): S | undefined;
  /** Whether the hypothesis may end here (the ending `[SEP]` is allowed). */
  canEnd(state: S): boolean;
}
