/**
 * The log of the coordinator and the workers, in one of two formats:
 *
 * - `text`: the human lines as they always were (the coordinator's on stdout, a worker's on
 *   stderr, a local worker's forwarded by its coordinator as `  [worker i] <line>`);
 * - `json`: one JSON object a line on stdout (pino, written synchronously: nothing is lost
 *   when the process exits), `time` (ISO 8601), `level` (`info`, `warn`, `error`), `msg` (the
 *   very text of the human line), `name` (`coordinator`, `worker`), `pid`, `hostname`, the
 *   run's context (`runId`, `generation`, `step`, and a worker's `workerId` and `rank`) once
 *   known, and the line's own numbers as fields (a progress line's `loss`, `tokensPerSecond`...).
 *
 * `auto` (the default, also from PRETRAIN_LOG_FORMAT) is `text` on a terminal and `json`
 * otherwise (Kubernetes, CI, a pipe). Whatever the format, a line never holds a registered
 * secret (the run's join token, the lines of a TLS key): they are replaced by `[redacted]`.
 */
import { pino, type Logger as Pino } from 'pino';

export const LOG_FORMAT_ENV = 'PRETRAIN_LOG_FORMAT';
export const LOG_FORMAT_CHOICES = ['auto', 'text', 'json'] as const;
export type LogFormatChoice = (typeof LOG_FORMAT_CHOICES)[number];
export type LogFormat = 'text' | 'json';
export type LogLevel = 'info' | 'warn' | 'error';
export type LogValue = string | number | boolean | null;
/** A line's fields beyond its text; undefined ones are left out. */
export type LogFields = Readonly<Record<string, LogValue | undefined>>;
/** How code hands over a log line: the human text, and (for the JSON format) its fields. */
export type LogFn = (msg: string, fields?: LogFields, level?: LogLevel) => void;

export class LogConfigError extends Error {
  override name = 'LogConfigError';
}

/** The format asked for (`--log-format`, else $PRETRAIN_LOG_FORMAT, else auto), with auto decided by whether stdout is a terminal. */
export function resolveLogFormat(choice: string | undefined, env: NodeJS.ProcessEnv = process.env, stdoutIsTerminal = process.stdout.isTTY === true): LogFormat {
  const asked = choice ?? (env[LOG_FORMAT_ENV] || undefined) ?? 'auto';
  if (!(LOG_FORMAT_CHOICES as readonly string[]).includes(asked)) {
    throw new LogConfigError(`${choice === undefined ? `${LOG_FORMAT_ENV}=${asked}` : `--log-format ${asked}`} is not a log format: choose ${LOG_FORMAT_CHOICES.join(', ')}`);
  }
  if (asked === 'auto') return stdoutIsTerminal ? 'text' : 'json';
  return asked as LogFormat;
}

export const REDACTED = '[redacted]';

/** The lines of a PEM's body (a TLS key): none may appear in a log, whole or as part of a line. */
export function pemSecrets(pem: string | Buffer): string[] {
  return pem
    .toString()
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l.length >= 16 && !l.startsWith('-----'));
}

export interface LoggerOptions {
  readonly format: LogFormat;
  /** `name` of every JSON line. */
  readonly name: 'coordinator' | 'worker';
  /** Where text lines go (JSON lines always go to stdout). */
  readonly textStream: NodeJS.WritableStream;
  /** Fields of every line (the run's context as it changes); a line's own fields win. */
  readonly context?: () => LogFields;
  /** JSON lines go to this file descriptor (default 1, stdout). */
  readonly fd?: number;
}

export class Logger {
  readonly format: LogFormat;
  private context: () => LogFields;
  private readonly secrets: string[] = [];
  private readonly pino: Pino | undefined;
  private readonly destination: { write(s: string): unknown } | undefined;
  private readonly textStream: NodeJS.WritableStream;

  constructor(o: LoggerOptions) {
    this.format = o.format;
    this.context = o.context ?? (() => ({}));
    this.textStream = o.textStream;
    if (o.format === 'json') {
      const destination = pino.destination({ dest: o.fd ?? 1, sync: true });
      // a local worker outlives a coordinator killed outright, and its stdout pipe with it: lines go nowhere then
      destination.on('error', () => {});
      this.destination = destination;
      this.pino = pino(
        {
          name: o.name,
          level: 'info',
          timestamp: pino.stdTimeFunctions.isoTime,
          formatters: { level: (label) => ({ level: label }) },
          mixin: () => this.context(),
          hooks: { streamWrite: (s) => this.scrub(s) },
        },
        destination,
      );
    }
  }

  /** The fields every line gets from now on (a line's own fields win). */
  setContext(context: () => LogFields): void {
    this.context = context;
  }

  /** Never write this value (nor any of these): it is replaced by [redacted] wherever it would appear. */
  redact(...secrets: readonly string[]): void {
    // as it reads in a JSON line too, should it hold a character JSON escapes
    for (const s of secrets.flatMap((s) => [s, JSON.stringify(s).slice(1, -1)])) if (s.length > 0 && !this.secrets.includes(s)) this.secrets.push(s);
  }

  readonly log: LogFn = (msg, fields, level = 'info') => {
    if (this.pino) this.pino[level](fields ?? {}, msg);
    else this.writeText(msg);
  };

  info(msg: string, fields?: LogFields): void {
    this.log(msg, fields, 'info');
  }

  warn(msg: string, fields?: LogFields): void {
    this.log(msg, fields, 'warn');
  }

  /**
   * A line of local worker `worker` (its stdout or stderr). Text: `  [worker i] <line>`.
   * JSON: the worker's own JSON line passes with `localWorker: i` added (its time, level,
   * context and fields kept); any other line (a crash's stack, a library's warning) becomes
   * a line of this logger with that text as `msg`.
   */
  forward(worker: number, line: string, level: LogLevel = 'info'): void {
    if (!this.pino) return this.writeText(`  [worker ${worker}] ${line}`);
    const record = parseJsonLine(line);
    if (record) this.writeRaw(`${JSON.stringify({ ...record, localWorker: worker })}\n`);
    else this.log(line, { localWorker: worker }, level);
  }

  /** The error that ends the program: text `<program>: error: <message>` on stderr (and the stack), JSON a line of level error. */
  reportError(program: string, message: string, error: unknown, withStack: boolean): void {
    const stack = withStack && error instanceof Error ? error.stack : undefined;
    if (this.pino) {
      this.pino.error({ error: error instanceof Error ? error.name : typeof error, stack }, message);
      return;
    }
    process.stderr.write(this.scrub(`${program}: error: ${message}\n`));
    if (stack) process.stderr.write(this.scrub(`${stack}\n`));
  }

  private writeText(line: string): void {
    this.textStream.write(this.scrub(`${line}\n`));
  }

  private writeRaw(line: string): void {
    this.destination?.write(this.scrub(line));
  }

  /** The text without any registered secret. */
  scrub(text: string): string {
    let out = text;
    for (const s of this.secrets) if (out.includes(s)) out = out.split(s).join(REDACTED);
    return out;
  }
}

/** A JSON object line (as a worker in the JSON format writes), else undefined. */
export function parseJsonLine(line: string): Record<string, unknown> | undefined {
  if (!line.startsWith('{')) return undefined;
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The human text of a log line of either format: a JSON line's `msg`, else the line. */
export function logText(line: string): string {
  const record = parseJsonLine(line);
  return record && typeof record.msg === 'string' ? record.msg : line;
}
