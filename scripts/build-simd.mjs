// Compiles the AssemblyScript kernels in src/backend/simd/*.ts (their helpers live in
// src/backend/simd/lib/ and are not entry points) into one wasm module,
// dist/src/backend/simd/kernels.wasm, and checks what makes it safe to run on the
// tfjs wasm backend's heap: it imports that memory and nothing else, and has no data
// segments and no start function that would write into memory tfjs owns.
import asc from 'assemblyscript/asc';
import { existsSync, readdirSync, readFileSync, statSync, unlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const sourceDir = 'src/backend/simd';
const output = 'dist/src/backend/simd/kernels.wasm';
const sources = readdirSync(join(root, sourceDir)).filter((f) => f.endsWith('.ts')).sort().map((f) => `${sourceDir}/${f}`);

// an unchanged tree is not rebuilt (npm start and npm test build first): the module is
// current when it is newer than every kernel source, helper and this script
const newest = (dir) => readdirSync(join(root, dir), { withFileTypes: true })
  .map((e) => (e.isDirectory() ? newest(join(dir, e.name)) : statSync(join(root, dir, e.name)).mtimeMs))
  .reduce((a, b) => Math.max(a, b), 0);
const built = existsSync(join(root, output)) ? statSync(join(root, output)).mtimeMs : 0;
if (built > Math.max(newest(sourceDir), statSync(fileURLToPath(import.meta.url)).mtimeMs)) process.exit(0);

const { error, stderr } = await asc.main([
  ...sources,
  '-o', output,
  '--enable', 'simd,bulk-memory',
  '-O3', '--runtime', 'stub', '--noAssert',
  '--importMemory', '--noExportMemory',
], { stdout: process.stdout, stderr: process.stderr, baseDir: root });
if (error) {
  console.error(`build-simd: asc failed: ${error.message}\n${stderr.toString()}`);
  process.exit(1);
}

const bytes = readFileSync(join(root, output));
const module = new WebAssembly.Module(bytes);
const imports = WebAssembly.Module.imports(module);
const problems = [];
if (imports.length !== 1 || imports[0].module !== 'env' || imports[0].name !== 'memory' || imports[0].kind !== 'memory') {
  problems.push(`imports must be exactly env.memory, got ${JSON.stringify(imports)}`);
}
// walk the sections: 8 = start, 11 = data, 12 = data count
const SECTION_NAMES = { 8: 'a start function', 11: 'data segments', 12: 'a data count' };
let at = 8;
const leb = () => {
  let value = 0;
  let shift = 0;
  for (;;) {
    const byte = bytes[at++];
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    if (byte < 0x80) return value;
  }
};
while (at < bytes.length) {
  const id = bytes[at++];
  const size = leb();
  if (SECTION_NAMES[id]) problems.push(`it has ${SECTION_NAMES[id]} (section ${id})`);
  at += size;
}
if (problems.length > 0) {
  console.error(`build-simd: ${output} is not safe to share the tfjs heap: ${problems.join('; ')}.`);
  console.error('A standard-library call that needs static data (e.g. Mathf.log) is the usual cause; see src/backend/simd/lib/math.ts.');
  unlinkSync(join(root, output));
  process.exit(1);
}
