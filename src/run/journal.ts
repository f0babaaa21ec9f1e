import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { syncDirectory } from '../checkpoint/atomic-write.js';
import { frameRecord, maskedCrc32c, readRecords, TFRecordError } from '../data/tfrecord.js';

/**
 * The run's append-only journal: one small JSON entry per event, each framed as a TFRecord
 * (length, CRC32C of the length, data, CRC32C of the data), so a torn or corrupt entry is
 * detected and `pretrain inspect`-style tools can walk it.
 *
 * A commit entry holds the step's positions in the epoch's permutation as ranges, not its
 * record ids: a step without aborts before it is one range (about 60 bytes framed), and
 * the ledger turns positions back into records (`DataLedger.redo`). Step numbers alone
 * would not do: which records a step got depends on the aborts before it, which are not
 * journaled. Positions also make the audit independent of the record ids.
 */

export const JOURNAL_FORMAT = 'tfjs-pretrain-journal/1';
export const JOURNAL_FILE = 'journal.tfrecord';

const count = z.number().int().nonnegative();
const checkpointName = z.string().regex(/^ckpt-\d{8}$/, 'a checkpoint folder name ckpt-<8 digits>');

const entrySchema = z.discriminatedUnion('type', [
  /**
   * The first entry of a run: what the audit needs to know about its epochs, and the
   * settings that decide the result (`settings`), so that a resume with other settings is
   * refused even before the first checkpoint exists.
   */
  z.object({ type: z.literal('start'), format: z.literal(JOURNAL_FORMAT), epochSize: count.min(1), globalBatch: count.min(1), seed: count, settings: z.record(z.string(), z.json()).optional() }).strict(),
  /** A step committed: its records, as positions of the epoch's permutation. */
  z.object({ type: z.literal('commit'), step: count, epoch: count, positions: z.array(z.tuple([count, count]).readonly()).min(1).readonly() }).strict(),
  /** A checkpoint of the state after `step` is complete under the run directory. */
  z.object({ type: z.literal('checkpoint'), step: count, dir: checkpointName }).strict(),
  /**
   * The run continues from the state after `fromStep` (from a checkpoint, or from live
   * workers): commits journaled before this entry with a step above `fromStep` are void.
   */
  z.object({ type: z.literal('resume'), fromStep: count, checkpoint: checkpointName.optional() }).strict(),
]);

export type JournalEntry = z.infer<typeof entrySchema>;

/** A journal that cannot be read or trusted; names the file and, for corruption, the byte offset. */
export class JournalError extends Error {
  override name = 'JournalError';
  constructor(
    readonly file: string,
    message: string,
    readonly offset?: number,
  ) {
    super(message);
  }
}

export interface JournalReplay {
  readonly file: string;
  readonly entries: JournalEntry[];
  /** Bytes of complete, valid entries: where the next append goes. */
  readonly validBytes: number;
  /** The remains of an append cut short by a crash, not part of the journal: where they start and how many bytes. */
  readonly tornTail?: { readonly offset: number; readonly bytes: number };
}

const HEADER = 12;
const FOOTER = 4;

/**
 * What the bytes from the first bad entry to the end are: a torn last append when they
 * are fewer than a header, zeros (the file grew but the data never reached the disk), or
 * a valid header whose entry runs to or past the end; else corruption, described. A bad
 * entry with data after it is corruption. A flipped bit inside the last entry looks like
 * a torn append and is dropped the same way: nothing in the bytes tells them apart.
 */
function classifyTail(tail: Buffer): 'torn' | string {
  if (tail.length < HEADER || tail.every((b) => b === 0)) return 'torn';
  if (tail.readUInt32LE(8) !== maskedCrc32c(tail.subarray(0, 8))) return 'the length checksum of an entry does not match';
  const total = HEADER + Number(tail.readBigUInt64LE(0)) + FOOTER;
  return total >= tail.length ? 'torn' : 'the data checksum of an entry does not match';
}

function corruption(file: string, offset: number, problem: string): JournalError {
  return new JournalError(
    file,
    `${file}: the journal is corrupt at byte ${offset} (${problem}), with entries after it. ` +
      `Restore it from a backup, or accept losing the entries from there on by truncating it to ${offset} bytes (truncate -s ${offset} ${file}); ` +
      'the run then resumes from its newest checkpoint',
    offset,
  );
}

/** Reads a journal without changing it. A torn tail is reported, corruption before the end refused. */
export async function replayJournal(file: string): Promise<JournalReplay> {
  const entries: JournalEntry[] = [];
  let validBytes = 0;
  try {
    for await (const record of readRecords(file)) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(Buffer.from(record.data).toString('utf8'));
      } catch {
        parsed = undefined;
      }
      const entry = entrySchema.safeParse(parsed);
      if (!entry.success) throw corruption(file, record.offset, `entry ${record.index} has valid checksums but is not a journal entry of this program`);
      entries.push(entry.data);
      validBytes = record.offset + HEADER + record.data.length + FOOTER;
    }
  } catch (err) {
    if (!(err instanceof TFRecordError)) throw err;
    if (err.offset === 0 && validBytes === 0 && !(await exists(file))) throw new JournalError(file, `${file}: no journal there (a run directory has ${JOURNAL_FILE} from its first step on)`);
    const bytes = await fs.readFile(file);
    const tail = bytes.subarray(err.offset);
    const kind = classifyTail(tail);
    if (kind !== 'torn') throw corruption(file, err.offset, kind);
    return { file, entries, validBytes, tornTail: { offset: err.offset, bytes: tail.length } };
  }
  return { file, entries, validBytes };
}

async function exists(file: string): Promise<boolean> {
  return fs.stat(file).then(
    () => true,
    () => false,
  );
}

export interface JournalStats {
  readonly appends: number;
  readonly bytes: number;
  /** Time spent in fsync: the cost of durability, per commit. */
  readonly syncSeconds: number;
}

/**
 * The journal opened for appending. `append` resolves only once the entry is on disk
 * (written and fdatasynced; fdatasync covers the file size an append changes). Appends
 * are written one at a time in call order. After a failed write or fsync the journal
 * refuses further appends: what reached the disk is unknown, and a restart's replay is
 * what finds out.
 */
export class Journal {
  private queue: Promise<void> = Promise.resolve();
  private broken: Error | undefined;
  private closed = false;
  private appends = 0;
  private bytes: number;
  private syncSeconds = 0;

  private constructor(
    readonly file: string,
    private readonly handle: fs.FileHandle,
    validBytes: number,
  ) {
    this.bytes = validBytes;
  }

  /**
   * Opens (creating it if absent) the journal for appending and returns what it holds. A
   * torn tail is cut off (and reported in the replay); corruption is refused.
   */
  static async open(file: string): Promise<{ journal: Journal; replay: JournalReplay }> {
    const existed = await exists(file);
    const replay: JournalReplay = existed ? await replayJournal(file) : { file, entries: [], validBytes: 0 };
    const handle = await fs.open(file, 'a');
    try {
      if (replay.tornTail) {
        await handle.truncate(replay.validBytes);
        await handle.datasync();
      }
      // a new file's name must survive a crash as much as its entries
      if (!existed) await syncDirectory(path.dirname(file));
    } catch (err) {
      await handle.close();
      throw err;
    }
    return { journal: new Journal(file, handle, replay.validBytes), replay };
  }

  get stats(): JournalStats {
    return { appends: this.appends, bytes: this.bytes, syncSeconds: this.syncSeconds };
  }

  /** Appends one entry; resolves once it is durable. */
  append(entry: JournalEntry): Promise<void> {
    if (this.closed) return Promise.reject(new JournalError(this.file, `${this.file}: the journal is closed`));
    const checked = entrySchema.safeParse(entry);
    if (!checked.success) return Promise.reject(new JournalError(this.file, `refusing to journal an invalid entry ${JSON.stringify(entry)}: ${checked.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`));
    const frame = frameRecord(Buffer.from(JSON.stringify(checked.data), 'utf8'));
    const result = this.queue.then(() => this.write(frame));
    this.queue = result.catch(() => undefined);
    return result;
  }

  /** Waits for the appends under way, then closes the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.queue;
    await this.handle.close();
  }

  private async write(frame: Buffer): Promise<void> {
    if (this.broken) throw new JournalError(this.file, `${this.file}: an earlier append failed (${this.broken.message}); the journal takes no more entries: restart the coordinator, which replays it`);
    try {
      await this.handle.appendFile(frame);
      const started = performance.now();
      await this.handle.datasync();
      this.syncSeconds += (performance.now() - started) / 1000;
    } catch (err) {
      this.broken = err as Error;
      throw new JournalError(this.file, `${this.file}: cannot append to the journal: ${(err as Error).message}`);
    }
    this.appends++;
    this.bytes += frame.length;
  }
}
