import { promises as fs } from 'node:fs';

/**
 * Writes a file so that it is either absent or complete: into a temporary name beside it,
 * fsynced, then renamed over the target. `write` gets the open handle of the temporary.
 */
export async function writeFileAtomically(file: string, write: (handle: fs.FileHandle) => Promise<void>): Promise<void> {
  const temp = `${file}.tmp-${process.pid}`;
  const handle = await fs.open(temp, 'w');
  try {
    await write(handle);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await fs.rm(temp, { force: true });
    throw err;
  }
  await handle.close();
  await fs.rename(temp, file);
}
