/** What a constrained decoder may emit next: a trie of allowed keys, say. */
export interface DecodeConstraint<S> {
  start(): S;
  /** The tokens allowed after `state`; null: any token. */
  allowed(state: S): Int32Array | null;
  /** The state after `token`, or undefined when `token` is not allowed. */
  advance(state: S, token: number): S | undefined;
  /** Whether [SEP] (the end) is allowed here: a key ends at this state. */
  canEnd(state: S): boolean;
}
