/**
 * STUB (branch io-convert): only the API of the TensorFlow checkpoint reader, so that the
 * converter compiles. The real reader comes from branch io-tfckpt and replaces this file
 * when the branches are merged. `open` always throws.
 */
export interface TfVariableInfo {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
}

export class TfCheckpointError extends Error {
  override name = 'TfCheckpointError';
}

export class TfCheckpoint {
  readonly variables: readonly TfVariableInfo[] = [];

  private constructor() {}

  static open(prefix: string): Promise<TfCheckpoint> {
    void prefix;
    return Promise.reject(new TfCheckpointError('the TensorFlow checkpoint reader is not in this build'));
  }

  read(name: string): Promise<Float32Array | Int32Array> {
    return Promise.reject(new TfCheckpointError(`cannot read ${name}: the TensorFlow checkpoint reader is not in this build`));
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
