/** Placeholder: the prefix tree (src/decode/trie.ts) comes from its own branch, which replaces this file. */
import { UserError } from '../cli/common.js';
import type { Vocab } from '../data/vocab.js';
import type { DecodeConstraint } from './constraint.js';

export function loadTrieConstraint(file: string, _vocab: Vocab): Promise<DecodeConstraint<unknown>> {
  return Promise.reject(new UserError(`--trie ${file}: the prefix tree module (src/decode/trie.ts) is not built in this version`));
}
