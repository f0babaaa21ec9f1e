import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';

/** The special tokens a BERT vocabulary must have for pretraining. */
export const REQUIRED_SPECIALS = ['[CLS]', '[SEP]', '[MASK]', '[UNK]'] as const;

export class VocabError extends Error {
  override name = 'VocabError';
}

/** A BERT `vocab.txt`: one token per line, id = line number (0-based). */
export class Vocab {
  readonly ids: ReadonlyMap<string, number>;
  readonly cls: number;
  readonly sep: number;
  readonly mask: number;
  readonly unk: number;
  /** [PAD] when present, else 0 (BERT's convention). */
  readonly pad: number;
  /** Lines whose token an earlier line already has (their ids shadow the earlier ones). */
  readonly repeated: number;

  /**
   * @param tokens one per id
   * @param hash SHA-256 of the vocabulary text, hex: what a manifest records
   * @param source where it came from, for messages
   */
  constructor(
    readonly tokens: readonly string[],
    readonly hash: string,
    readonly source = 'the vocabulary',
  ) {
    const ids = new Map<string, number>();
    // a repeated line takes the later id, as Google's load_vocab does
    tokens.forEach((t, i) => ids.set(t, i));
    this.ids = ids;
    this.repeated = ids.size === tokens.length ? 0 : tokens.length - ids.size;
    const missing = REQUIRED_SPECIALS.filter((s) => !ids.has(s));
    if (missing.length > 0) throw new VocabError(`${source} lacks ${missing.join(', ')}: a BERT vocabulary needs ${REQUIRED_SPECIALS.join(', ')} (one token per line)`);
    this.cls = ids.get('[CLS]')!;
    this.sep = ids.get('[SEP]')!;
    this.mask = ids.get('[MASK]')!;
    this.unk = ids.get('[UNK]')!;
    this.pad = ids.get('[PAD]') ?? 0;
  }

  get size(): number {
    return this.tokens.length;
  }

  static fromText(text: string, source = 'the vocabulary'): Vocab {
    const body = text.endsWith('\n') ? text.slice(0, -1) : text;
    if (body.length === 0) throw new VocabError(`${source} is empty`);
    // stripped like Google's load_vocab: a stray space or \r must not hide a token
    const tokens = body.split('\n').map((l) => l.trim());
    return new Vocab(tokens, createHash('sha256').update(text).digest('hex'), source);
  }

  static async load(file: string): Promise<Vocab> {
    let bytes: Buffer;
    try {
      bytes = await fs.readFile(file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new VocabError(code === 'ENOENT' ? `vocabulary file ${file} does not exist` : `cannot read vocabulary file ${file}: ${(err as Error).message}`);
    }
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw new VocabError(`vocabulary file ${file} is not valid UTF-8`);
    }
    return Vocab.fromText(text, `vocabulary file ${file}`);
  }

  /**
   * What to tell the user when tokens repeat: the rule is kept (the later id wins, as in
   * Google's BERT), but a repeated line is usually a mistake that silently leaves ids unused.
   */
  repeatedTokensWarning(): string | undefined {
    if (this.repeated === 0) return undefined;
    const first = this.tokens.findIndex((t, i) => this.ids.get(t) !== i);
    const token = this.tokens[first]!;
    const lines = this.tokens.flatMap((t, i) => (t === token ? [i + 1] : []));
    return (
      `${this.source} has ${this.repeated} repeated line(s), e.g. ${JSON.stringify(token)} on lines ${lines.join(', ')}; ` +
      `a repeated token takes the id of its last line (as Google's BERT does) and the earlier ids go unused`
    );
  }

  idOf(token: string): number {
    return this.ids.get(token) ?? this.unk;
  }
}
