export type { DecodeConstraint } from './constraint.js';
export type { Scorer } from './scorer.js';
export { FullRecomputeScorer, KvCacheScorer, forwardPositions, nextTokenLogProbs, type KvCache, type ModelScorerOptions } from './incremental.js';
export { ModelPartsError, modelApplication, modelVocabSize, transformerParts, type GenerativeApplication, type TransformerParts } from './model-parts.js';
export { beamSearch, sample, sampleStream, type BeamSearchOptions, type DecodeOptions, type Hypothesis, type SampleOptions } from './search.js';
export { generate, GenerationError, TextGenerator, type GenerateOptions, type TextGenerateOptions, type TextOutput } from './generate.js';
