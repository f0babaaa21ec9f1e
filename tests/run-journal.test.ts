import assert from 'node:assert/strict';
import { appendFile, mkdtemp, open, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { frameRecord } from '../src/data/tfrecord.js';
import { Journal, JOURNAL_FORMAT, type JournalEntry, JournalError, replayJournal } from '../src/run/journal.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'run-journal-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const ENTRIES: JournalEntry[] = [
  { type: 'start', format: JOURNAL_FORMAT, epochSize: 100, globalBatch: 8, seed: 3 },
  { type: 'commit', step: 0, epoch: 0, positions: [[0, 8]] },
  { type: 'commit', step: 1, epoch: 0, positions: [[8, 12], [20, 24]] },
  { type: 'checkpoint', step: 1, dir: 'ckpt-00000001' },
  { type: 'resume', fromStep: 1, checkpoint: 'ckpt-00000001' },
  { type: 'commit', step: 2, epoch: 0, positions: [[12, 20]] },
];

let n = 0;
async function journalWith(entries: readonly JournalEntry[]): Promise<string> {
  const file = path.join(dir, `journal-${n++}.tfrecord`);
  const { journal } = await Journal.open(file);
  // appended without waiting: they must still land in call order
  await Promise.all(entries.map((e) => journal.append(e)));
  await journal.close();
  return file;
}

/** The byte offset of each entry in a journal of `entries`. */
function offsets(entries: readonly JournalEntry[]): number[] {
  let at = 0;
  return entries.map((e) => {
    const here = at;
    at += frameRecord(Buffer.from(JSON.stringify(e))).length;
    return here;
  });
}

describe('Journal', () => {
  it('replays what was appended, in order, and continues appending after a reopen', async () => {
    const file = await journalWith(ENTRIES.slice(0, 3));
    const { journal, replay } = await Journal.open(file);
    assert.deepEqual(replay.entries, ENTRIES.slice(0, 3));
    assert.equal(replay.tornTail, undefined);
    for (const e of ENTRIES.slice(3)) await journal.append(e);
    assert.equal(journal.stats.appends, 3);
    assert.equal(journal.stats.bytes, (await stat(file)).size);
    await journal.close();
    await assert.rejects(journal.append(ENTRIES[1]!), /closed/);
    const again = await replayJournal(file);
    assert.deepEqual(again.entries, ENTRIES);
    assert.equal(again.validBytes, (await stat(file)).size);
    assert.ok(again.validBytes / ENTRIES.length < 100, 'entries are small');
  });

  it('drops a torn tail (an append cut short), cuts it off when opened for appending, and appends after it', async () => {
    const file = await journalWith(ENTRIES);
    const size = (await stat(file)).size;
    const last = offsets(ENTRIES).at(-1)!;
    for (const cut of [size - 1, last + 20, last + 5]) {
      await truncate(file, cut);
      const replay = await replayJournal(file);
      assert.deepEqual(replay.entries, ENTRIES.slice(0, -1), `cut at ${cut}`);
      assert.deepEqual(replay.tornTail, { offset: last, bytes: cut - last });
      assert.equal((await stat(file)).size, cut, 'replayJournal only reads');
    }
    const { journal, replay } = await Journal.open(file);
    assert.deepEqual(replay.tornTail, { offset: last, bytes: 5 });
    assert.equal((await stat(file)).size, last, 'the torn tail is cut off');
    await journal.append(ENTRIES.at(-1)!);
    await journal.close();
    assert.deepEqual((await replayJournal(file)).entries, ENTRIES);
  });

  it('drops a zero-filled tail (the file grew, the data never reached the disk)', async () => {
    const file = await journalWith(ENTRIES);
    const size = (await stat(file)).size;
    await appendFile(file, Buffer.alloc(300));
    const replay = await replayJournal(file);
    assert.deepEqual(replay.entries, ENTRIES);
    assert.deepEqual(replay.tornTail, { offset: size, bytes: 300 });
  });

  it('refuses corruption before the end, naming the file and the byte offset', async () => {
    const at = offsets(ENTRIES);
    for (const [entry, byte] of [
      [2, 15], // inside the data of entry 2
      [3, 1], // inside the length of entry 3
    ] as const) {
      const file = await journalWith(ENTRIES);
      const bytes = await readFile(file);
      bytes[at[entry]! + byte]! ^= 0x10;
      await writeFile(file, bytes);
      const message = new RegExp(`${file.replace(/[.\\]/g, '\\$&')}: the journal is corrupt at byte ${at[entry]} \\(the ${byte < 8 ? 'length' : 'data'} checksum`);
      await assert.rejects(replayJournal(file), (err: unknown) => err instanceof JournalError && err.offset === at[entry] && message.test(err.message) && err.message.includes(`truncate -s ${at[entry]}`));
      await assert.rejects(Journal.open(file), message);
      assert.equal((await stat(file)).size, bytes.length, 'a corrupt journal is left as it is');
    }
  });

  it('treats a flipped byte in the last entry as a torn append (indistinguishable), and refuses a valid frame that is no entry', async () => {
    const file = await journalWith(ENTRIES);
    const bytes = await readFile(file);
    bytes[bytes.length - 6]! ^= 1;
    await writeFile(file, bytes);
    assert.deepEqual((await replayJournal(file)).entries, ENTRIES.slice(0, -1));

    const foreign = path.join(dir, 'foreign.tfrecord');
    await writeFile(foreign, Buffer.concat([frameRecord(Buffer.from(JSON.stringify(ENTRIES[0]))), frameRecord(Buffer.from('{"type":"commit","step":-1}'))]));
    await assert.rejects(replayJournal(foreign), /corrupt at byte \d+ \(entry 1 has valid checksums but is not a journal entry/);
  });

  it('names a missing journal, and refuses to write an invalid entry', async () => {
    await assert.rejects(replayJournal(path.join(dir, 'none.tfrecord')), /none\.tfrecord: no journal there/);
    const { journal } = await Journal.open(path.join(dir, 'strict.tfrecord'));
    await assert.rejects(journal.append({ type: 'commit', step: -1, epoch: 0, positions: [[0, 1]] }), /invalid entry.*step/);
    await assert.rejects(journal.append({ type: 'checkpoint', step: 1, dir: '../../etc' }), /ckpt-<8 digits>/);
    await journal.close();
  });

  it('resolves an append only after fdatasync, and takes no more entries after a failed one', async () => {
    const probe = await open(path.join(dir, 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as { datasync: () => Promise<void> };
    await probe.close();
    const original = proto.datasync;
    const events: string[] = [];
    let fail = false;
    proto.datasync = async function (this: unknown) {
      events.push('sync');
      if (fail) throw new Error('EIO: i/o error, fdatasync');
      return original.call(this);
    };
    try {
      const file = path.join(dir, 'synced.tfrecord');
      const { journal } = await Journal.open(file);
      await journal.append(ENTRIES[0]!).then(() => events.push('resolved'));
      await journal.append(ENTRIES[1]!).then(() => events.push('resolved'));
      assert.deepEqual(events, ['sync', 'resolved', 'sync', 'resolved']);
      fail = true;
      await assert.rejects(journal.append(ENTRIES[2]!), /cannot append to the journal: EIO/);
      fail = false;
      await assert.rejects(journal.append(ENTRIES[3]!), /an earlier append failed \(EIO.*restart the coordinator/);
      assert.equal(journal.stats.appends, 2);
      assert.ok(journal.stats.syncSeconds > 0);
      await journal.close();
    } finally {
      proto.datasync = original;
    }
  });
});
