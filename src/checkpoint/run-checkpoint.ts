import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { loadOptimizerState, saveOptimizerState } from '../optim/state-file.js';
import type { OptimizerState } from '../optim/optimizer.js';
import type { LedgerState } from '../run/ledger.js';
import { syncDirectory, writeFileAtomically } from './atomic-write.js';
import { type Float32Tensor, readSafetensors, writeSafetensors } from './safetensors.js';

/**
 * Checkpoints of a run: `<runDir>/ckpt-<step, 8 digits>/` with
 * - `params.safetensors`: the trainable weights by name, in the model's order;
 * - `optimizer.safetensors`: the optimizer state (`saveOptimizerState`);
 * - `state.json`: step, generation, ledger state, RNG state, run config;
 * - `manifest.json`, written last: every other file's bytes and SHA-256.
 * A checkpoint is written in a temporary folder beside the others (every file fsynced)
 * and renamed into place, and the run folder fsynced: a folder named `ckpt-*` is complete
 * unless the disk damaged it later, which the manifest's checksums catch on load. One
 * process writes a run directory's checkpoints at a time.
 */

export const CHECKPOINT_FORMAT = 'tfjs-pretrain-checkpoint/1';
export const RUN_STATE_FORMAT = 'tfjs-pretrain-run-state/1';

const PARAMS = 'params.safetensors';
const OPTIMIZER = 'optimizer.safetensors';
const STATE = 'state.json';
const MANIFEST = 'manifest.json';
const CONTENT_FILES = [PARAMS, OPTIMIZER, STATE] as const;
const NAME = /^ckpt-(\d{8})$/;
/** Leftovers of a write or a removal cut short: never a checkpoint, removed when seen. */
const TEMP_PREFIX = '.tmp-ckpt-';
const TRASH_PREFIX = '.trash-ckpt-';

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** What a run needs besides tensors to continue: `state.json`. */
export interface RunState {
  /** Steps committed: the checkpoint holds the state after step `step`. */
  readonly step: number;
  /** The membership generation when it was taken. */
  readonly generation: number;
  readonly ledger: LedgerState;
  /** The run's random state (seeds; masks and dropout are derived from them statelessly). */
  readonly rng: JsonValue;
  /** The run config, so that a resumed run can check it continues the same run. */
  readonly config: JsonValue;
}

export interface RunCheckpointContent {
  readonly state: RunState;
  /** The trainable weights, in the model's stable order. */
  readonly params: readonly Float32Tensor[];
  readonly optimizer: OptimizerState;
}

export interface LoadedRunCheckpoint extends RunCheckpointContent {
  /** `ckpt-<step>` */
  readonly name: string;
  readonly dir: string;
  readonly step: number;
}

export interface SkippedCheckpoint {
  readonly name: string;
  readonly dir: string;
  /** Why it cannot be used, naming the file. */
  readonly reason: string;
}

export type LatestCheckpoint =
  | { readonly checkpoint: LoadedRunCheckpoint; readonly skipped: readonly SkippedCheckpoint[] }
  | { readonly checkpoint: undefined; readonly skipped: readonly SkippedCheckpoint[]; readonly reason: string };

interface FileDigest {
  readonly bytes: number;
  readonly sha256: string;
}

interface Manifest {
  readonly format: typeof CHECKPOINT_FORMAT;
  readonly step: number;
  readonly files: Readonly<Record<string, FileDigest>>;
}

export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

export function checkpointName(step: number): string {
  if (!Number.isSafeInteger(step) || step < 0 || step > 99_999_999) throw new CheckpointError(`checkpoint step ${step} is not an integer from 0 to 99999999`);
  return `ckpt-${String(step).padStart(8, '0')}`;
}

async function digest(file: string): Promise<FileDigest> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of createReadStream(file)) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { bytes, sha256: hash.digest('hex') };
}

async function writeJson(file: string, value: unknown): Promise<void> {
  await writeFileAtomically(file, (handle) => handle.writeFile(JSON.stringify(value, null, 1) + '\n'));
}

/** Renames a folder out of the checkpoints' namespace, then deletes it: a removal cut short never looks like a damaged checkpoint. */
async function retire(runDir: string, name: string): Promise<void> {
  const trash = path.join(runDir, `${TRASH_PREFIX}${name}-${randomBytes(4).toString('hex')}`);
  await fs.rename(path.join(runDir, name), trash);
  await syncDirectory(runDir);
  await fs.rm(trash, { recursive: true, force: true });
}

/** The `ckpt-*` folders of a run, newest first. */
export async function listCheckpoints(runDir: string): Promise<{ name: string; dir: string; step: number }[]> {
  const entries = await fs.readdir(runDir, { withFileTypes: true }).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [];
    throw err;
  });
  return entries
    .filter((e) => e.isDirectory() && NAME.test(e.name))
    .map((e) => ({ name: e.name, dir: path.join(runDir, e.name), step: Number(NAME.exec(e.name)![1]) }))
    .sort((a, b) => b.step - a.step);
}

/** Removes what writes or removals cut short by a crash left behind. */
async function removeLeftovers(runDir: string): Promise<string[]> {
  const entries = await fs.readdir(runDir).catch(() => [] as string[]);
  const leftovers = entries.filter((e) => e.startsWith(TEMP_PREFIX) || e.startsWith(TRASH_PREFIX));
  for (const e of leftovers) await fs.rm(path.join(runDir, e), { recursive: true, force: true });
  return leftovers;
}

/**
 * Writes the checkpoint of `content.state.step` under `runDir` and then, with `keep`,
 * removes all but the newest `keep` checkpoints (older ones only once the new one is in
 * place). A checkpoint of the same step already there (left by a run that resumed from
 * an earlier one) is replaced. Returns its folder and the names removed.
 */
export async function saveRunCheckpoint(runDir: string, content: RunCheckpointContent, options: { keep?: number } = {}): Promise<{ dir: string; bytes: number; removed: string[] }> {
  const { keep } = options;
  if (keep !== undefined && (!Number.isSafeInteger(keep) || keep < 1)) throw new CheckpointError(`keep must be an integer >= 1 (the checkpoints to keep), got ${keep}`);
  const step = content.state.step;
  const name = checkpointName(step);
  await fs.mkdir(runDir, { recursive: true });
  const temp = path.join(runDir, `${TEMP_PREFIX}${name}-${process.pid}-${randomBytes(4).toString('hex')}`);
  await fs.mkdir(temp);
  let bytes = 0;
  try {
    // each writer fsyncs its file and the temporary folder
    await writeSafetensors(path.join(temp, PARAMS), content.params, { step: String(step) });
    await saveOptimizerState(path.join(temp, OPTIMIZER), content.optimizer);
    await writeJson(path.join(temp, STATE), { format: RUN_STATE_FORMAT, ...content.state });
    const files: Record<string, FileDigest> = {};
    for (const f of CONTENT_FILES) {
      files[f] = await digest(path.join(temp, f));
      bytes += files[f].bytes;
    }
    const manifest: Manifest = { format: CHECKPOINT_FORMAT, step, files };
    await writeJson(path.join(temp, MANIFEST), manifest);
    if ((await listCheckpoints(runDir)).some((c) => c.name === name)) await retire(runDir, name);
    await fs.rename(temp, path.join(runDir, name));
    await syncDirectory(runDir);
  } catch (err) {
    await fs.rm(temp, { recursive: true, force: true });
    throw err;
  }
  const removed: string[] = [];
  if (keep !== undefined) {
    for (const old of (await listCheckpoints(runDir)).slice(keep)) {
      await retire(runDir, old.name);
      removed.push(old.name);
    }
  }
  await removeLeftovers(runDir);
  return { dir: path.join(runDir, name), bytes, removed };
}

async function readJson(file: string): Promise<unknown> {
  const text = await fs.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new CheckpointError(err.code === 'ENOENT' ? `${file} is missing` : `cannot read ${file}: ${err.message}`);
  });
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new CheckpointError(`${file} is not JSON (${(err as Error).message})`);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Loads one checkpoint folder, verifying every file against its manifest; throws a CheckpointError naming the file. */
export async function loadRunCheckpoint(dir: string): Promise<LoadedRunCheckpoint> {
  const name = path.basename(dir);
  const match = NAME.exec(name);
  if (!match) throw new CheckpointError(`${dir} is not a checkpoint folder (ckpt-<8 digits>)`);
  const step = Number(match[1]);
  const manifestFile = path.join(dir, MANIFEST);
  const manifest = await readJson(manifestFile);
  if (!isObject(manifest) || manifest.format !== CHECKPOINT_FORMAT || !isObject(manifest.files)) {
    throw new CheckpointError(`${manifestFile} is not a checkpoint manifest of this program (format ${isObject(manifest) ? String(manifest.format) : 'missing'}, expected ${CHECKPOINT_FORMAT})`);
  }
  if (manifest.step !== step) throw new CheckpointError(`${manifestFile} is of step ${String(manifest.step)}, but its folder is named for step ${step}`);
  for (const f of CONTENT_FILES) {
    const expected = manifest.files[f];
    if (!isObject(expected)) throw new CheckpointError(`${manifestFile} does not list ${f}`);
    const file = path.join(dir, f);
    const actual = await digest(file).catch((err: NodeJS.ErrnoException) => {
      throw new CheckpointError(err.code === 'ENOENT' ? `${file} is missing` : `cannot read ${file}: ${err.message}`);
    });
    if (actual.bytes !== expected.bytes) throw new CheckpointError(`${file} has ${actual.bytes} bytes, the manifest says ${String(expected.bytes)} (truncated or replaced)`);
    if (actual.sha256 !== expected.sha256) throw new CheckpointError(`${file} does not match its SHA-256 in the manifest (damaged on disk)`);
  }
  const stateFile = path.join(dir, STATE);
  const raw = await readJson(stateFile);
  if (!isObject(raw) || raw.format !== RUN_STATE_FORMAT || raw.step !== step || !Number.isSafeInteger(raw.generation) || !isObject(raw.ledger) || !('rng' in raw) || !('config' in raw)) {
    throw new CheckpointError(`${stateFile} is not the run state of step ${step} (format ${RUN_STATE_FORMAT}: step, generation, ledger, rng, config)`);
  }
  const { format: _format, ...state } = raw;
  const params = (await readSafetensors(path.join(dir, PARAMS))).tensors;
  const optimizer = await loadOptimizerState(path.join(dir, OPTIMIZER));
  return { name, dir, step, state: state as unknown as RunState, params, optimizer };
}

/**
 * The newest checkpoint of the run whose files all verify. A damaged or incomplete one is
 * skipped, named to `onSkip`, and the one before it is tried; leftovers of writes cut
 * short are removed. With none usable, `checkpoint` is undefined and `reason` says why.
 */
export async function loadLatestCheckpoint(runDir: string, options: { onSkip?: (skipped: SkippedCheckpoint) => void } = {}): Promise<LatestCheckpoint> {
  await removeLeftovers(runDir);
  const skipped: SkippedCheckpoint[] = [];
  const candidates = await listCheckpoints(runDir);
  for (const c of candidates) {
    try {
      return { checkpoint: await loadRunCheckpoint(c.dir), skipped };
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      const skip = { name: c.name, dir: c.dir, reason };
      skipped.push(skip);
      options.onSkip?.(skip);
    }
  }
  const reason = candidates.length === 0 ? `no checkpoint under ${runDir}` : `none of the ${candidates.length} checkpoints under ${runDir} is usable`;
  return { checkpoint: undefined, skipped, reason };
}
