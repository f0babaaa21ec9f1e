import { z } from 'zod';

/** Activations a `hidden_act` may name; `gelu` is the exact (erf) form BERT uses. */
export const ACTIVATIONS = ['gelu', 'gelu_new', 'relu', 'swish', 'silu', 'tanh', 'linear'] as const;
export type ActivationName = (typeof ACTIVATIONS)[number];

const positiveInt = z.number().int().positive();
const probability = z.number().min(0).lt(1);

/** The fields of Google's `bert_config.json` that shape the graph. Unknown fields are kept out, not rejected. */
const bertConfigSchema = z
  .object({
    vocab_size: positiveInt,
    hidden_size: positiveInt,
    num_hidden_layers: positiveInt,
    num_attention_heads: positiveInt,
    intermediate_size: positiveInt,
    hidden_act: z.enum(ACTIVATIONS),
    max_position_embeddings: positiveInt,
    type_vocab_size: positiveInt,
    hidden_dropout_prob: probability,
    attention_probs_dropout_prob: probability,
    initializer_range: z.number().positive(),
  })
  .refine((c) => c.hidden_size % c.num_attention_heads === 0, {
    message: 'num_attention_heads must divide hidden_size',
    path: ['num_attention_heads'],
  });

export type BertConfig = z.infer<typeof bertConfigSchema>;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** What each field must hold, in the words an error message uses. */
const EXPECTED: Record<keyof BertConfig, string> = {
  vocab_size: 'a positive integer',
  hidden_size: 'a positive integer',
  num_hidden_layers: 'a positive integer',
  num_attention_heads: 'a positive integer',
  intermediate_size: 'a positive integer',
  hidden_act: `one of ${ACTIVATIONS.join(', ')}`,
  max_position_embeddings: 'a positive integer',
  type_vocab_size: 'a positive integer',
  hidden_dropout_prob: 'a probability in [0, 1)',
  attention_probs_dropout_prob: 'a probability in [0, 1)',
  initializer_range: 'a number > 0',
};

function describeValue(value: unknown): string {
  if (typeof value === 'string') return `the string ${JSON.stringify(value)}`;
  if (Array.isArray(value)) return 'an array';
  if (value !== null && typeof value === 'object') return 'an object';
  return String(value);
}

/**
 * Validates a parsed `bert_config.json`; `source` names where it came from so the
 * message points the user at the right file. Each problem names the field, what it
 * must hold and what it holds (zod does not report the value by default).
 */
export function parseBertConfig(raw: unknown, source = 'bert_config'): BertConfig {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigError(`invalid model config in ${source}:\n  expected a JSON object with the fields of bert_config.json, got ${describeValue(raw)}`);
  }
  const result = bertConfigSchema.safeParse(raw);
  if (result.success) return result.data;
  const fields = raw as Record<string, unknown>;
  const problems = result.error.issues.map((issue) => {
    const field = String(issue.path[0] ?? '');
    const expected = EXPECTED[field as keyof BertConfig];
    if (issue.code === 'custom' || expected === undefined) return `${field || '(root)'}: ${issue.message}`;
    const value = fields[field];
    return value === undefined ? `${field}: missing (expected ${expected})` : `${field}: expected ${expected}, got ${describeValue(value)}`;
  });
  throw new ConfigError(`invalid model config in ${source}:\n  ${problems.join('\n  ')}`);
}

/** A named size preset (e.g. `L4-H256`), BERT's usual ratios: heads = H/64, FFN = 4H. */
export function presetConfig(name: string, vocabSize: number, overrides: Partial<BertConfig> = {}): BertConfig {
  const match = /^L(\d+)-H(\d+)$/.exec(name);
  if (!match) throw new ConfigError(`unknown model preset "${name}"; expected the form L<layers>-H<hidden>, e.g. L4-H256`);
  const layers = Number(match[1]);
  const hidden = Number(match[2]);
  return parseBertConfig(
    {
      vocab_size: vocabSize,
      hidden_size: hidden,
      num_hidden_layers: layers,
      num_attention_heads: Math.max(1, Math.floor(hidden / 64)),
      intermediate_size: 4 * hidden,
      hidden_act: 'gelu',
      max_position_embeddings: 512,
      type_vocab_size: 2,
      hidden_dropout_prob: 0.1,
      attention_probs_dropout_prob: 0.1,
      initializer_range: 0.02,
      ...overrides,
    },
    `preset ${name}`,
  );
}
