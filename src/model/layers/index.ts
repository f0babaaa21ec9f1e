// Importing this module registers every custom layer class for (de)serialization.
export { AttentionMask, ATTENTION_KINDS, MASKED_SCORE, type AttentionKind } from './attention-mask.js';
export { MultiHeadSelfAttention } from './attention.js';
export { TokenEmbedding, PositionEmbedding } from './embeddings.js';
export { FeedForward, Projection } from './feed-forward.js';
export { LayerNorm } from './layer-norm.js';
export { SeededDropout, BiasAdd, Residual } from './dropout.js';
export { activation } from './activations.js';
export { seededDropout, type CallKwargs } from './base.js';
export { FirstToken } from './pooling.js';
