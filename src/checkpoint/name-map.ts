/**
 * The variable names of one BERT model in three namings, as one table:
 * - ours: `trainableWeights` of `buildTransformer` (`Transformer-3-MultiHeadSelfAttention/query/kernel`);
 * - tf: Google BERT's TensorFlow checkpoints (`bert/encoder/layer_3/attention/self/query/kernel`);
 * - hf: Hugging Face `BertForMaskedLM` (`bert.encoder.layer.3.attention.self.query.weight`).
 *
 * Ours and TF share one layout (a dense kernel is [in, out]); a Hugging Face `nn.Linear.weight`
 * is [out, in], so the rows marked `transpose` are transposed to and from `hf`. `{layer}`
 * stands for the block's index. The rows are in the order of `trainableWeights`. The MLM
 * output projection is tied to the token embedding in all three: TF has no decoder weight at
 * all, HF's `cls.predictions.decoder.weight` is the same tensor as the word embeddings (and its
 * `decoder.bias` the same as `cls.predictions.bias`).
 */
import type { BertConfig } from '../model/config.js';

export type Naming = 'ours' | 'tf' | 'hf';
export const NAMINGS: readonly Naming[] = ['ours', 'tf', 'hf'];

/** How a tensor in `hf` relates to ours/TF: the same, or the 2-D transpose. */
export type Transform = 'none' | 'transpose';

/** A dimension of a weight, named by the config field that sets it. */
export type Dim = 'vocab_size' | 'hidden_size' | 'intermediate_size' | 'max_position_embeddings' | 'type_vocab_size';

export interface NameMapRow {
  readonly ours: string;
  readonly tf: string;
  readonly hf: string;
  /** From ours/TF to HF (and back). */
  readonly transform: Transform;
  /** The shape in ours/TF layout, by config field. */
  readonly shape: readonly Dim[];
  /** Whether the row repeats for every Transformer block (`{layer}` in the names). */
  readonly perLayer: boolean;
  readonly note?: string;
}

const H: Dim = 'hidden_size';
const row = (ours: string, tf: string, hf: string, transform: Transform, shape: readonly Dim[], note?: string): NameMapRow => ({
  ours, tf, hf, transform, shape, perLayer: ours.includes('{layer}'), ...(note === undefined ? {} : { note }),
});
const L = 'bert/encoder/layer_{layer}';
const HL = 'bert.encoder.layer.{layer}';

/** Every weight of our model (`withMlm: true`), in `trainableWeights` order. */
export const NAME_MAP: readonly NameMapRow[] = [
  row('Embedding-Token/embeddings', 'bert/embeddings/word_embeddings', 'bert.embeddings.word_embeddings.weight', 'none', ['vocab_size', H],
    'also the MLM output projection (tied): TF has no decoder weight, HF cls.predictions.decoder.weight is this tensor'),
  row('Embedding-Segment/embeddings', 'bert/embeddings/token_type_embeddings', 'bert.embeddings.token_type_embeddings.weight', 'none', ['type_vocab_size', H]),
  row('Embedding-Position/embeddings', 'bert/embeddings/position_embeddings', 'bert.embeddings.position_embeddings.weight', 'none', ['max_position_embeddings', H]),
  row('Embedding-Norm/gamma', 'bert/embeddings/LayerNorm/gamma', 'bert.embeddings.LayerNorm.weight', 'none', [H]),
  row('Embedding-Norm/beta', 'bert/embeddings/LayerNorm/beta', 'bert.embeddings.LayerNorm.bias', 'none', [H]),
  ...(['query', 'key', 'value'] as const).flatMap((p) => [
    row(`Transformer-{layer}-MultiHeadSelfAttention/${p}/kernel`, `${L}/attention/self/${p}/kernel`, `${HL}.attention.self.${p}.weight`, 'transpose', [H, H]),
    row(`Transformer-{layer}-MultiHeadSelfAttention/${p}/bias`, `${L}/attention/self/${p}/bias`, `${HL}.attention.self.${p}.bias`, 'none', [H]),
  ]),
  row('Transformer-{layer}-MultiHeadSelfAttention/output/kernel', `${L}/attention/output/dense/kernel`, `${HL}.attention.output.dense.weight`, 'transpose', [H, H]),
  row('Transformer-{layer}-MultiHeadSelfAttention/output/bias', `${L}/attention/output/dense/bias`, `${HL}.attention.output.dense.bias`, 'none', [H]),
  row('Transformer-{layer}-MultiHeadSelfAttention-Norm/gamma', `${L}/attention/output/LayerNorm/gamma`, `${HL}.attention.output.LayerNorm.weight`, 'none', [H]),
  row('Transformer-{layer}-MultiHeadSelfAttention-Norm/beta', `${L}/attention/output/LayerNorm/beta`, `${HL}.attention.output.LayerNorm.bias`, 'none', [H]),
  row('Transformer-{layer}-FeedForward/intermediate/kernel', `${L}/intermediate/dense/kernel`, `${HL}.intermediate.dense.weight`, 'transpose', [H, 'intermediate_size']),
  row('Transformer-{layer}-FeedForward/intermediate/bias', `${L}/intermediate/dense/bias`, `${HL}.intermediate.dense.bias`, 'none', ['intermediate_size']),
  row('Transformer-{layer}-FeedForward/output/kernel', `${L}/output/dense/kernel`, `${HL}.output.dense.weight`, 'transpose', ['intermediate_size', H]),
  row('Transformer-{layer}-FeedForward/output/bias', `${L}/output/dense/bias`, `${HL}.output.dense.bias`, 'none', [H]),
  row('Transformer-{layer}-FeedForward-Norm/gamma', `${L}/output/LayerNorm/gamma`, `${HL}.output.LayerNorm.weight`, 'none', [H]),
  row('Transformer-{layer}-FeedForward-Norm/beta', `${L}/output/LayerNorm/beta`, `${HL}.output.LayerNorm.bias`, 'none', [H]),
  row('MLM-Dense/kernel', 'cls/predictions/transform/dense/kernel', 'cls.predictions.transform.dense.weight', 'transpose', [H, H]),
  row('MLM-Dense/bias', 'cls/predictions/transform/dense/bias', 'cls.predictions.transform.dense.bias', 'none', [H]),
  row('MLM-Norm/gamma', 'cls/predictions/transform/LayerNorm/gamma', 'cls.predictions.transform.LayerNorm.weight', 'none', [H]),
  row('MLM-Norm/beta', 'cls/predictions/transform/LayerNorm/beta', 'cls.predictions.transform.LayerNorm.bias', 'none', [H]),
  row('MLM-Bias/bias', 'cls/predictions/output_bias', 'cls.predictions.bias', 'none', ['vocab_size'], 'HF cls.predictions.decoder.bias is this tensor'),
];

/** What an import does with a known variable that is not one of our weights. */
export type ExtraAction = 'skip' | 'tied';

export interface KnownExtra {
  readonly naming: 'tf' | 'hf';
  /** The whole name, or a pattern (a RegExp source, anchored) when `pattern`. */
  readonly name: string;
  readonly action: ExtraAction;
  readonly note: string;
  /** For `tied`: the HF name whose tensor this one is. */
  readonly tiedTo?: string;
}

/** Variables other checkpoints have that our model does not: skipped with a note, never an error. */
export const KNOWN_EXTRAS: readonly KnownExtra[] = [
  { naming: 'tf', name: 'bert/pooler/dense/kernel', action: 'skip', note: 'the pooler (for NSP and classification): our model has none' },
  { naming: 'tf', name: 'bert/pooler/dense/bias', action: 'skip', note: 'the pooler (for NSP and classification): our model has none' },
  { naming: 'tf', name: 'cls/seq_relationship/output_weights', action: 'skip', note: 'the next-sentence-prediction head: not trained here' },
  { naming: 'tf', name: 'cls/seq_relationship/output_bias', action: 'skip', note: 'the next-sentence-prediction head: not trained here' },
  { naming: 'hf', name: 'bert.pooler.dense.weight', action: 'skip', note: 'the pooler (for NSP and classification): our model has none' },
  { naming: 'hf', name: 'bert.pooler.dense.bias', action: 'skip', note: 'the pooler (for NSP and classification): our model has none' },
  { naming: 'hf', name: 'cls.seq_relationship.weight', action: 'skip', note: 'the next-sentence-prediction head: not trained here' },
  { naming: 'hf', name: 'cls.seq_relationship.bias', action: 'skip', note: 'the next-sentence-prediction head: not trained here' },
  { naming: 'hf', name: 'bert.embeddings.position_ids', action: 'skip', note: 'a buffer of 0..max_position_embeddings-1, not a weight' },
  { naming: 'hf', name: 'cls.predictions.decoder.weight', action: 'tied', tiedTo: 'bert.embeddings.word_embeddings.weight', note: 'tied to the word embeddings' },
  { naming: 'hf', name: 'cls.predictions.decoder.bias', action: 'tied', tiedTo: 'cls.predictions.bias', note: 'the same tensor as cls.predictions.bias' },
];

/** TF optimizer state and counters: skipped without a note, only counted. */
export const TF_OPTIMIZER_VARIABLE = /(^|\/)(global_step|adam_m|adam_v|Adam|Adam_1|Momentum|bad_steps|good_steps|loss_scale)$/;

/** A mapped weight of one config: the row with `{layer}` filled in and the shape computed. */
export interface MappedWeight {
  readonly ours: string;
  readonly tf: string;
  readonly hf: string;
  readonly transform: Transform;
  /** In ours/TF layout. */
  readonly shape: readonly number[];
  /** The config fields behind each dimension (for error messages). */
  readonly dims: readonly Dim[];
  readonly note?: string;
}

/** The shape of a weight in one naming's layout. */
export function shapeIn(weight: MappedWeight, naming: Naming): readonly number[] {
  return naming === 'hf' && weight.transform === 'transpose' ? [...weight.shape].reverse() : weight.shape;
}

/** The table for a config: every weight of `buildTransformer(config, { withMlm: true })`, in `trainableWeights` order. */
export function expandNameMap(config: BertConfig): MappedWeight[] {
  const fill = (r: NameMapRow, layer: number): MappedWeight => {
    const sub = (s: string) => s.replaceAll('{layer}', String(layer));
    return { ours: sub(r.ours), tf: sub(r.tf), hf: sub(r.hf), transform: r.transform, shape: r.shape.map((d) => config[d]), dims: r.shape, ...(r.note === undefined ? {} : { note: r.note }) };
  };
  const embeddings = NAME_MAP.filter((r) => !r.perLayer && r.ours.startsWith('Embedding-'));
  const blocks = NAME_MAP.filter((r) => r.perLayer);
  const head = NAME_MAP.filter((r) => !r.perLayer && !r.ours.startsWith('Embedding-'));
  const out = embeddings.map((r) => fill(r, 0));
  for (let layer = 0; layer < config.num_hidden_layers; layer++) out.push(...blocks.map((r) => fill(r, layer)));
  out.push(...head.map((r) => fill(r, 0)));
  return out;
}

/**
 * The HF name a variable of another HF checkpoint stands for: older checkpoints name
 * LayerNorm parameters `gamma`/`beta`, and a `BertModel` (no head) has no `bert.` prefix.
 */
export function canonicalHfName(name: string): string {
  let n = name.replace(/\.LayerNorm\.gamma$/, '.LayerNorm.weight').replace(/\.LayerNorm\.beta$/, '.LayerNorm.bias');
  if (/^(embeddings|encoder|pooler)\./.test(n)) n = `bert.${n}`;
  return n;
}

export function knownExtra(naming: Naming, name: string): KnownExtra | undefined {
  if (naming === 'ours') return undefined;
  return KNOWN_EXTRAS.find((e) => e.naming === naming && e.name === name);
}
