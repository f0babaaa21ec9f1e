// The part of hpack.js (no published types) that src/comm/h2/hpack.ts uses.
declare module 'hpack.js' {
  interface HeaderField {
    name: string;
    value: string;
    neverIndex: boolean;
  }
  interface Decompressor {
    write(chunk: Buffer): boolean;
    execute(): void;
    read(): HeaderField | null;
    on(event: 'error', listener: (error: Error) => void): this;
  }
  const hpack: {
    decompressor: { create(options: { table: { maxSize: number } }): Decompressor };
  };
  export default hpack;
}
