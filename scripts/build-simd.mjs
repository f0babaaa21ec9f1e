// Compiles the AssemblyScript kernels in src/backend/simd/*.ts (their helpers live in
// src/backend/simd/lib/ and are not entry points) into two wasm modules from the same
// sources, and checks what makes each safe to run on the tfjs wasm backend's heap: it
// imports that memory and nothing else, and has no data segments and no start function
// that would write into memory tfjs owns.
// - dist/src/backend/simd/kernels.wasm: wasm SIMD. Every kernel; the optimizer's passes
//   always run from it;
// - dist/src/backend/simd/kernels-fma.wasm: relaxed SIMD as well, so that gemm.ts's
//   products use fused multiply-adds: the model's kernels, where the runtime compiles it
//   (src/backend/wasm/simd-module.ts).
import asc from 'assemblyscript/asc';
import { existsSync, readdirSync, readFileSync, statSync, unlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const sourceDir = 'src/backend/simd';
const outputs = [
  { output: 'dist/src/backend/simd/kernels.wasm', features: 'simd,bulk-memory' },
  { output: 'dist/src/backend/simd/kernels-fma.wasm', features: 'simd,bulk-memory,relaxed-simd' },
];
const sources = readdirSync(join(root, sourceDir)).filter((f) => f.endsWith('.ts')).sort().map((f) => `${sourceDir}/${f}`);

// an unchanged tree is not rebuilt (npm start and npm test build first): the modules are
// current when each is newer than every kernel source, helper and this script
const newest = (dir) => readdirSync(join(root, dir), { withFileTypes: true })
  .map((e) => (e.isDirectory() ? newest(join(dir, e.name)) : statSync(join(root, dir, e.name)).mtimeMs))
  .reduce((a, b) => Math.max(a, b), 0);
const builtAt = (output) => (existsSync(join(root, output)) ? statSync(join(root, output)).mtimeMs : 0);
if (Math.min(...outputs.map(({ output }) => builtAt(output))) > Math.max(newest(sourceDir), statSync(fileURLToPath(import.meta.url)).mtimeMs)) process.exit(0);

// Node 20 compiles relaxed SIMD behind this V8 flag (on by default from Node 22); the
// checks below compile each module
setFlagsFromString('--experimental-wasm-relaxed-simd');
for (const { output, features } of outputs) await build(output, features);

async function build(output, features) {
  const { error, stderr } = await asc.main([
    ...sources,
    '-o', output,
    '--enable', features,
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
}
