/** snappyjs (pure JavaScript Snappy, raw block format) ships no types. */
declare module 'snappyjs' {
  const snappy: {
    /** Throws an Error on a damaged stream or, with maxLength, on a longer output than that. */
    uncompress(compressed: Uint8Array, maxLength?: number): Uint8Array;
    compress(uncompressed: Uint8Array): Uint8Array;
  };
  export default snappy;
}
