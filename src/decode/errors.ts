// The decoding errors a command reports as bad input; no tfjs here, so the CLI can name them without loading it.

/** The model is not one decoding can use (an encoder, a layer missing). */
export class ModelPartsError extends Error {
  override name = 'ModelPartsError';
}

/** A model and a vocabulary that do not fit together, or no room to generate. */
export class GenerationError extends Error {
  override name = 'GenerationError';
}
