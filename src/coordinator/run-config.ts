/**
 * The run file of `coordinator start --config run.yaml`: YAML or JSON whose keys are the
 * options of `coordinator start`, in camelCase (`globalBatch`, `checkpointEvery`...), plus
 * `optimizer` as an object. An option given on the command line wins over the file. Every
 * problem names the file and the key.
 */
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { APPLICATIONS, type Application } from '../model/build.js';
import { type OptimizerConfig, parseOptimizerConfig } from '../optim/config.js';

export class RunConfigError extends Error {
  override name = 'RunConfigError';
}

const count = z.number().int().positive();
const seconds = z.number().positive();

const runFileSchema = z
  .object({
    preset: z.string().regex(/^L\d+-H\d+$/, 'expected the form L<layers>-H<hidden>, e.g. L4-H256'),
    bertConfig: z.string().min(1),
    init: z.string().min(1),
    application: z.enum(APPLICATIONS as unknown as [Application, ...Application[]]),
    data: z.string().min(1),
    optimizer: z.unknown(),
    steps: count,
    globalBatch: count,
    microBatch: z.number().int().nonnegative(),
    allreduceCompression: z.enum(['none', 'fp16']),
    shardOptimizer: z.boolean(),
    balance: z.enum(['even', 'dynamic']),
    seed: z.number().int().nonnegative(),
    clipNorm: z.number().nonnegative(),
    recompute: z.boolean(),
    checkpointEvery: count,
    keep: count,
    checksumEvery: z.number().int().nonnegative(),
    localWorkers: z.number().int().nonnegative(),
    pinWorkers: z.boolean(),
    workers: count,
    minWorkers: count,
    runDir: z.string().min(1),
    listen: z.string().regex(/^.+:\d{1,5}$/, 'expected host:port'),
    tokenFile: z.string().min(1),
    tlsCa: z.string().min(1),
    tlsCert: z.string().min(1),
    tlsKey: z.string().min(1),
    joinTimeout: seconds,
    rejoinTimeout: seconds,
    stepTimeout: seconds,
    heartbeatTimeout: seconds,
    failureBackoff: z.number().nonnegative(),
    maxFailures: z.number().int().nonnegative(),
    backend: z.enum(['auto', 'tensorflow', 'wasm', 'cpu']),
    logEvery: count,
    metricsPort: z.number().int().min(0).max(65535),
    metricsHost: z.string().min(1),
    dashboardPort: z.number().int().min(0).max(65535),
    dashboardHost: z.string().min(1),
  })
  .partial()
  .strict();

export type RunFile = Omit<z.infer<typeof runFileSchema>, 'optimizer'> & { optimizer?: OptimizerConfig };

export const RUN_FILE_EXAMPLE = `# run.yaml: every key is a \`coordinator start\` option in camelCase; the command line wins
data: runs/mlm                # a \`pretrain prepare\` folder
preset: L4-H256               # or bertConfig: path/to/bert_config.json
application: encoder
optimizer: {type: adafactor, learningRate: 0.01, wrappers: [{type: piecewiseLinear, schedule: {1000: 1, 100000: 0}}]}
globalBatch: 64
microBatch: 16
steps: 100000
checkpointEvery: 500
keep: 3
localWorkers: 0               # workers come from other machines
workers: 8
minWorkers: 4
listen: 0.0.0.0:7070
tokenFile: /etc/pretrain/token
`;

export async function readRunFile(file: string): Promise<RunFile> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new RunConfigError(`cannot read the run file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (e) {
    throw new RunConfigError(`the run file ${file} is not valid YAML or JSON: ${(e as Error).message.split('\n')[0]}`);
  }
  const result = runFileSchema.safeParse(raw ?? {});
  if (!result.success) {
    const problems = result.error.issues.map((i) => (i.code === 'unrecognized_keys' ? `unknown key(s) ${i.keys.join(', ')} (keys are the options of \`coordinator start\` in camelCase)` : `${i.path.join('.') || '(root)'}: ${i.message}`));
    throw new RunConfigError(`invalid run file ${file}: ${problems.join('; ')}`);
  }
  const { optimizer, ...rest } = result.data;
  if (rest.preset !== undefined && rest.bertConfig !== undefined) throw new RunConfigError(`invalid run file ${file}: give preset or bertConfig, not both`);
  return optimizer === undefined ? rest : { ...rest, optimizer: parseOptimizerConfig(optimizer, `${file} (optimizer)`) };
}
