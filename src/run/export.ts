/**
 * `coordinator export <run-dir>`: a checkpoint of a run as a tfjs LayersModel folder
 * (model.json + weights.bin + bert_config.json, loadable with tf.loadLayersModel or
 * src/checkpoint/layers-model-io, and what `pretrain convert --from tfjs` reads) plus the
 * optimizer state beside it, for fine-tuning or for continuing elsewhere.
 */
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { exportWeights, writeLayersModel } from '../checkpoint/convert.js';
import { ConvertError } from '../checkpoint/model-sources.js';
import { checkpointName, type LoadedRunCheckpoint, loadLatestCheckpoint, loadRunCheckpoint } from '../checkpoint/run-checkpoint.js';
import { type Application, APPLICATIONS } from '../model/build.js';
import { parseBertConfig } from '../model/config.js';
import { saveOptimizerState } from '../optim/index.js';

/** The optimizer state's file name inside an exported model's folder. */
export const OPTIMIZER_STATE_FILE = 'optimizer.safetensors';
const MODEL_JSON = 'model.json';

/** What the user asked for cannot be done (no checkpoint, an occupied folder...): one line, what to do. */
export class ExportError extends Error {
  override name = 'ExportError';
}

export interface ExportOptions {
  readonly runDir: string;
  /** The checkpoint of this step; default the newest complete one. */
  readonly step?: number;
  readonly out: string;
  /** Replace a model already in `out`. */
  readonly overwrite?: boolean;
}

export interface ExportResult {
  readonly checkpoint: string;
  readonly step: number;
  readonly out: string;
  readonly weights: number;
}

/**
 * Checks that the model can be written to `dir` before anything is built: a folder (made if
 * missing) that is writable and holds no model, unless `overwrite`.
 */
async function checkOutDir(dir: string, overwrite: boolean): Promise<void> {
  const stat = await fs.stat(dir).catch(() => undefined);
  if (stat && !stat.isDirectory()) throw new ExportError(`cannot export to ${dir}: it is a file, not a folder; pass --out <folder>`);
  if (stat && !overwrite && (await fs.stat(path.join(dir, MODEL_JSON)).catch(() => undefined))) {
    throw new ExportError(`${dir} already holds a model; pass --overwrite to replace it, or another --out folder`);
  }
  const probe = path.join(dir, `.write-test-${process.pid}`);
  try {
    await fs.mkdir(dir, { recursive: true });
    await fs.writeFile(probe, '');
    await fs.rm(probe);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new ExportError(`cannot export to ${dir}: ${e.code === 'ENOTDIR' || e.code === 'EEXIST' ? 'a part of the path is a file' : (e.code ?? e.message)}; pass another --out folder`);
  }
}

async function findCheckpoint(runDir: string, step: number | undefined): Promise<LoadedRunCheckpoint> {
  if (step !== undefined) return loadRunCheckpoint(path.join(runDir, checkpointName(step)));
  const latest = await loadLatestCheckpoint(runDir);
  if (!latest.checkpoint) throw new ExportError(`nothing to export: ${latest.reason}`);
  return latest.checkpoint;
}

/**
 * Writes the checkpoint's weights as the run's model (through `writeLayersModel`, the one
 * place that builds a model from named weights; the backend must be selected) with the
 * optimizer state beside it.
 */
export async function exportCheckpoint(o: ExportOptions): Promise<ExportResult> {
  await checkOutDir(o.out, o.overwrite ?? false);
  const checkpoint = await findCheckpoint(o.runDir, o.step);
  const config = checkpoint.state.config as { spec?: Record<string, unknown> } | null;
  if (!config?.spec) throw new ExportError(`${checkpoint.dir}/state.json has no run spec in its config: not a checkpoint of \`coordinator start\``);
  const { model: modelConfig, application } = config.spec;
  if (typeof application !== 'string' || !(APPLICATIONS as readonly string[]).includes(application)) throw new ExportError(`${checkpoint.dir}/state.json names no known application (${String(application)})`);
  const bertConfig = parseBertConfig(modelConfig, `${checkpoint.dir}/state.json (config.spec.model)`);
  // checked before anything is written: a mismatch is the checkpoint's fault, not the disk's
  try {
    exportWeights(checkpoint.params, 'ours', bertConfig);
  } catch (err) {
    if (err instanceof ConvertError) throw new ExportError(`${checkpoint.dir}: ${err.message}`);
    throw err;
  }
  await saveRescued(o.out, async (dir) => {
    await writeLayersModel(dir, bertConfig, application as Application, checkpoint.params, true);
    await saveOptimizerState(path.join(dir, OPTIMIZER_STATE_FILE), checkpoint.optimizer);
  });
  return { checkpoint: checkpoint.dir, step: checkpoint.step, out: o.out, weights: checkpoint.params.length };
}

/** Writes with `save`; when that fails, into a new temporary folder, named in the error, so nothing is lost. */
async function saveRescued(dir: string, save: (dir: string) => Promise<void>): Promise<void> {
  try {
    await save(dir);
  } catch (err) {
    const rescue = await fs.mkdtemp(path.join(tmpdir(), 'tfjs-pretrain-model-'));
    await save(rescue);
    const e = err as NodeJS.ErrnoException;
    throw new ExportError(`could not write the model to ${dir} (${e.code ? `${e.code} at ${e.path ?? dir}` : e.message}); it was written to ${rescue} instead`);
  }
}
