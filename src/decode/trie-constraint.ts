/**
 * Constrained decoding over a prefix tree of KB keys: a beam may only emit the tokens that
 * continue some key, and [SEP] (the end) exactly where a key ends, even where longer keys
 * go on. The state is the trie node of the beam's prefix; a prefix that leaves the trie has
 * no state (`advance` gives undefined), so such a beam cannot exist.
 */
import type { DecodeConstraint } from './constraint.js';
import { loadTrie, type Trie, type VocabIdentity } from './trie.js';

export { TrieError, type VocabIdentity } from './trie.js';

export class TrieConstraint implements DecodeConstraint<number> {
  /** The root's allowed tokens, computed once: every beam starts there. */
  private rootAllowed: Int32Array | undefined;

  constructor(readonly trie: Trie) {}

  start(): number {
    return 0;
  }

  /**
   * The tokens that continue a key after `state`, ascending; [SEP] is not among them (it
   * is the end, see `canEnd`). Empty at a leaf, where only [SEP] may follow. Read-only: it
   * may be a view onto the trie or shared between calls.
   */
  allowed(state: number): Int32Array {
    if (state === 0 && this.rootAllowed) return this.rootAllowed;
    const children = this.trie.childTokens(state);
    const ids = children instanceof Int32Array ? children : Int32Array.from(children);
    if (state === 0) this.rootAllowed = ids;
    return ids;
  }

  /** The node after `token`, or undefined when no key continues with it. */
  advance(state: number, token: number): number | undefined {
    const child = this.trie.child(state, token);
    return child < 0 ? undefined : child;
  }

  /** Whether a key ends here: [SEP] is allowed (also where longer keys continue). */
  canEnd(state: number): boolean {
    return this.trie.isKeyEnd(state);
  }

  /** The KB values of the key that ends at `state` (a finished beam's answer); empty where none ends. */
  valuesAt(state: number): string[] {
    return this.trie.valuesAt(state);
  }
}

/**
 * Loads a trie file for decoding with a model whose vocabulary is `vocab` (a `Vocab`, or
 * its size and SHA-256): a trie built with another vocabulary is refused, naming the file.
 */
export async function loadTrieConstraint(file: string, vocab: VocabIdentity): Promise<TrieConstraint> {
  return new TrieConstraint(await loadTrie(file, vocab));
}
