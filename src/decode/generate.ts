/**
 * Generation from a `unilm` or `lm` model: text in, hypotheses out, decoded in batches with
 * the key/value cache. `generate` works on token ids; `TextGenerator` adds the tokenizer.
 */
import type * as tfl from '@tensorflow/tfjs-layers';
import type { BertTokenizer } from '../data/tokenizer.js';
import { GenerationError } from './errors.js';
import { KvCacheScorer } from './incremental.js';
import { type TransformerParts, transformerParts } from './model-parts.js';
import { type BeamSearchOptions, beamSearch, type Hypothesis, sample, type SampleOptions } from './search.js';

export { GenerationError };

export type GenerateOptions<S = unknown> = ({ readonly mode: 'beam' } & BeamSearchOptions<S>) | ({ readonly mode: 'sample' } & SampleOptions<S>);

/** GenerateOptions where the end token defaults to the vocabulary's [SEP]. */
export type TextGenerateOptions<S = unknown> = (({ readonly mode: 'beam' } & Omit<BeamSearchOptions<S>, 'endToken'>) | ({ readonly mode: 'sample' } & Omit<SampleOptions<S>, 'endToken'>)) & { readonly endToken?: number };

/** Decodes every input (token ids: `[CLS] source [SEP]` for unilm, `[CLS] prompt` for lm) at once. */
export function generate<S>(model: tfl.LayersModel | TransformerParts, inputs: readonly (readonly number[])[], options: GenerateOptions<S>): Hypothesis[][] {
  const scorer = new KvCacheScorer(model, { inputs });
  try {
    return options.mode === 'beam' ? beamSearch(scorer, options) : sample(scorer, options);
  } finally {
    scorer.dispose();
  }
}

export interface TextOutput {
  readonly text: string;
  readonly tokens: string[];
  readonly ids: number[];
  readonly score: number;
  readonly ended: boolean;
}

/** A model with its tokenizer: text sources to text outputs. */
export class TextGenerator {
  readonly parts: TransformerParts;

  constructor(
    model: tfl.LayersModel,
    readonly tokenizer: BertTokenizer,
  ) {
    this.parts = transformerParts(model);
    const vocabSize = tokenizer.vocab.size;
    if (vocabSize !== this.parts.vocabSize) {
      throw new GenerationError(`${tokenizer.vocab.source} has ${vocabSize} tokens but the model's token embedding has ${this.parts.vocabSize} rows: use the vocabulary the model was trained with`);
    }
  }

  /**
   * The token ids of a source: `[CLS] text [SEP]` (unilm) or `[CLS] text` (lm), cut to leave
   * `room` positions for the output.
   */
  encode(text: string, room: number): number[] {
    const limit = this.parts.maxPositions - room;
    if (limit < 3) throw new GenerationError(`the model's ${this.parts.maxPositions} positions leave no room for a source next to ${room} generated tokens: lower the maximum length`);
    const { ids } = this.tokenizer.encode(text, undefined, limit);
    return this.parts.application === 'unilm' ? ids : ids.slice(0, -1);
  }

  /** One list of outputs per source, best first (beam) or in draw order (sampling). */
  generate<S>(sources: readonly string[], options: TextGenerateOptions<S>): TextOutput[][] {
    const room = options.maxLength ?? 32;
    const inputs = sources.map((s) => this.encode(s, room));
    const results = generate(this.parts, inputs, { ...options, endToken: options.endToken ?? this.tokenizer.vocab.sep } as GenerateOptions<S>);
    return results.map((hs) =>
      hs.map((h) => ({
        text: this.tokenizer.decode(h.tokens),
        tokens: h.tokens.map((id) => this.tokenizer.vocab.tokens[id] ?? '[UNK]'),
        ids: h.tokens,
        score: h.score,
        ended: h.ended,
      })),
    );
  }
}
