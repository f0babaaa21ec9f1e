import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

/**
 * Writes a file so that it is either absent or complete: into a temporary name beside it
 * (unique, so overlapping writes of one file cannot mix), fsynced, renamed over the target,
 * and the folder fsynced so the rename itself survives a crash. `write` gets the open
 * handle of the temporary; on any failure the temporary is removed.
 */
export async function writeFileAtomically(file: string, write: (handle: fs.FileHandle) => Promise<void>): Promise<void> {
  const temp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const handle = await fs.open(temp, 'w');
  try {
    try {
      await write(handle);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(temp, file);
  } catch (err) {
    await fs.rm(temp, { force: true });
    throw err;
  }
  await syncDirectory(path.dirname(file));
}

/** Fsyncs a folder, so that the names created, renamed or removed in it survive a crash. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
