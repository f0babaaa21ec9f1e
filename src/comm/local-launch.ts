/**
 * Ranks as local processes, with a static rendezvous over their stdio: each rank announces
 * what it listens on as a JSON line, the parent answers with everyone's announcements, and
 * from then on each stdout line is one JSON message to the parent. The benchmark and the
 * tests launch ranks this way; the coordinator does the rendezvous over the network (src/coordinator/).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

export type Message = Record<string, unknown>;

interface RankState {
  child: ChildProcess;
  queue: Message[];
  waiting: ((m: Message | Error) => void) | undefined;
  stderr: string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exited: boolean;
}

export class RankGroup {
  readonly #ranks: RankState[];
  /** What each rank announced, indexed by rank. */
  readonly announcements: Message[];

  private constructor(ranks: RankState[], announcements: Message[]) {
    this.#ranks = ranks;
    this.announcements = announcements;
  }

  /**
   * Spawns `n` node processes running `script`, waits for every announcement (bounded), and
   * sends them to all. On any failure every process started is killed.
   */
  static async start(script: string, n: number, options: { env: (rank: number) => NodeJS.ProcessEnv; args?: (rank: number) => string[]; nodeArgs?: string[]; timeoutMs?: number }): Promise<RankGroup> {
    const ranks: RankState[] = [];
    const group = new RankGroup(ranks, []);
    try {
      for (let rank = 0; rank < n; rank++) {
        const child = spawn(process.execPath, [...(options.nodeArgs ?? []), script, ...(options.args?.(rank) ?? [])], { env: options.env(rank), stdio: ['pipe', 'pipe', 'pipe'] });
        const state: RankState = {
          child,
          queue: [],
          waiting: undefined,
          stderr: '',
          exited: false,
          exit: new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal }))),
        };
        void state.exit.then(() => {
          state.exited = true;
          state.waiting?.(new Error(`rank ${rank} exited${state.stderr ? `: ${state.stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}`));
        });
        child.stderr!.setEncoding('utf8').on('data', (s: string) => (state.stderr = (state.stderr + s).slice(-20_000)));
        child.stdin!.on('error', () => {});
        createInterface({ input: child.stdout! }).on('line', (line) => {
          let m: Message;
          try {
            m = JSON.parse(line) as Message;
          } catch {
            m = { event: 'text', line };
          }
          if (state.waiting) state.waiting(m);
          else state.queue.push(m);
        });
        ranks.push(state);
      }
      const timeout = options.timeoutMs ?? 30_000;
      const announced = await Promise.all(ranks.map((_, r) => group.next(r, timeout)));
      group.announcements.push(...announced);
      for (const s of ranks) s.child.stdin!.write(JSON.stringify(announced) + '\n');
      return group;
    } catch (e) {
      await group.stop();
      throw e;
    }
  }

  get size(): number {
    return this.#ranks.length;
  }

  pid(rank: number): number {
    return this.#ranks[rank]!.child.pid!;
  }

  stderr(rank: number): string {
    return this.#ranks[rank]!.stderr;
  }

  /** The next JSON line of a rank, or an Error if it exits or `timeoutMs` passes first. */
  next(rank: number, timeoutMs: number): Promise<Message> {
    const s = this.#ranks[rank]!;
    const queued = s.queue.shift();
    if (queued) return Promise.resolve(queued);
    if (s.exited) return Promise.reject(new Error(`rank ${rank} has exited: ${s.stderr.trim().split('\n').slice(-3).join(' | ')}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        s.waiting = undefined;
        reject(new Error(`rank ${rank} sent nothing within ${timeoutMs} ms`));
      }, timeoutMs);
      s.waiting = (m) => {
        clearTimeout(timer);
        s.waiting = undefined;
        if (m instanceof Error) reject(m);
        else resolve(m);
      };
    });
  }

  /** Sends one JSON line to a rank. */
  send(rank: number, message: Message): void {
    this.#ranks[rank]!.child.stdin!.write(JSON.stringify(message) + '\n');
  }

  signal(rank: number, signal: NodeJS.Signals): void {
    const s = this.#ranks[rank]!;
    if (!s.exited) s.child.kill(signal);
  }

  exit(rank: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.#ranks[rank]!.exit;
  }

  /** Kills every rank still running (continuing stopped ones first) and waits for them. */
  async stop(): Promise<void> {
    for (const s of this.#ranks) {
      if (s.exited) continue;
      s.child.kill('SIGCONT');
      s.child.kill('SIGKILL');
    }
    await Promise.all(this.#ranks.map((s) => s.exit));
  }
}

let stdinLines: { queue: string[]; waiter: ((line: string | undefined) => void) | undefined; closed: boolean } | undefined;

/** The next line the parent sent (undefined once stdin is closed). Rank scripts exit explicitly when done. */
export function nextLine(): Promise<string | undefined> {
  if (!stdinLines) {
    const state = { queue: [] as string[], waiter: undefined as ((line: string | undefined) => void) | undefined, closed: false };
    stdinLines = state;
    const rl = createInterface({ input: process.stdin });
    rl.on('line', (line) => {
      const w = state.waiter;
      state.waiter = undefined;
      if (w) w(line);
      else state.queue.push(line);
    });
    rl.on('close', () => {
      state.closed = true;
      state.waiter?.(undefined);
    });
  }
  const s = stdinLines;
  if (s.queue.length) return Promise.resolve(s.queue.shift());
  if (s.closed) return Promise.resolve(undefined);
  return new Promise((resolve) => (s.waiter = resolve));
}

/** The rank side of the rendezvous: announce, then read everyone's announcements from stdin. */
export async function joinLocalGroup(announcement: Message): Promise<Message[]> {
  process.stdout.write(JSON.stringify(announcement) + '\n');
  const line = await nextLine();
  if (line === undefined) throw new Error('stdin closed before the peers were sent');
  return JSON.parse(line) as Message[];
}

/** Messages to the parent after the rendezvous. */
export function report(message: Message): void {
  process.stdout.write(JSON.stringify(message) + '\n');
}
