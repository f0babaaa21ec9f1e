/**
 * What every command-line program of the project shares: the number parsers (one wording
 * for one rule), the `--debug` switch, and how an error reaches the user. The rules:
 * - every error is one line on stderr, `<program>: error: <message>`, commander's own too;
 * - a stack trace only with `--debug`;
 * - exit 2 for bad input (options, files, configs), 1 for corrupt data or a failed run.
 */
import { Command, CommanderError, InvalidArgumentError } from 'commander';

export const EXIT_USAGE = 2;
export const EXIT_FAILURE = 1;

/**
 * An error the user can act on, reported as its message alone. `exitCode` 2 means the
 * input was wrong (fix the command); 1 means the run or the data failed.
 */
export class UserError extends Error {
  override name = 'UserError';
  constructor(
    message: string,
    readonly exitCode: number = EXIT_USAGE,
  ) {
    super(message);
  }
}

function integer(value: string, min: number, expected: string): number {
  const n = Number(value);
  if (!/^\s*\d+\s*$/.test(value) || !Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`expected ${expected}, got "${value}".`);
  return n;
}

/** 1, 2, 3, ... */
export function positiveInt(value: string): number {
  return integer(value, 1, 'a positive integer (1, 2, ...)');
}

/** 0, 1, 2, ... */
export function nonNegativeInt(value: string): number {
  return integer(value, 0, 'an integer >= 0');
}

function number(value: string, ok: (n: number) => boolean, expected: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || !ok(n)) throw new InvalidArgumentError(`expected ${expected}, got "${value}".`);
  return n;
}

/** A finite number > 0. */
export function positiveNumber(value: string): number {
  return number(value, (n) => n > 0, 'a number > 0');
}

/** A finite number >= 0. */
export function nonNegativeNumber(value: string): number {
  return number(value, (n) => n >= 0, 'a number >= 0');
}

/** A program with the shared error format and `--debug`; add its commands to it. */
export function createProgram(name: string, description: string): Command {
  return new Command(name)
    .description(description)
    .option('--debug', 'print the stack trace of an error')
    .showSuggestionAfterError()
    .exitOverride()
    // commander's messages already start with "error: "
    .configureOutput({ outputError: (text, write) => write(`${name}: ${text}`) });
}

/** One line for a file-system refusal (ENOENT, EACCES, ENOSPC...), naming the path. */
function fileSystemMessage(err: NodeJS.ErrnoException): string | undefined {
  const code = err.code;
  if (typeof code !== 'string' || !/^E[A-Z]+$/.test(code) || err.syscall === undefined) return undefined;
  const hint: Record<string, string> = {
    ENOENT: 'it does not exist',
    EEXIST: 'something is already there',
    ENOTDIR: 'a part of the path is a file, not a folder',
    EISDIR: 'it is a folder, not a file',
    EACCES: 'permission denied',
    EPERM: 'permission denied',
    ENOSPC: 'the disk is full',
    EROFS: 'the file system is read-only',
  };
  return `cannot ${err.syscall} ${err.path ?? 'a file'}: ${hint[code] ?? code} (${code})`;
}

/** Where the program's closing error goes instead of stderr: `<program>: error: <line>`, or a JSON log line. */
export type ErrorReporter = (program: string, line: string, err: unknown, withStack: boolean) => void;
let errorReporter: ErrorReporter | undefined;

/** From now on the closing error is reported through this (a command that logs JSON reports it as a JSON line); undefined: stderr again. */
export function reportErrorsWith(reporter: ErrorReporter | undefined): void {
  errorReporter = reporter;
}

/**
 * Parses and runs the program and returns the exit code. `userErrors` are the error
 * classes whose message is enough (with the exit code each gets); anything else is a
 * defect of ours, reported in one line that asks for `--debug`.
 */
export async function runProgram(program: Command, argv: string[], userErrors: [new (...args: never[]) => Error, number][] = []): Promise<number> {
  const debug = argv.includes('--debug');
  const report = (message: string, err: unknown): void => {
    // one line, so that logs and scripts see one error: an indented list ("x:\n  a\n  b") becomes "x: a; b"
    const line = message.trim().replace(/:?\n\s*/g, (m) => (m.startsWith(':') ? ': ' : '; '));
    if (errorReporter) return errorReporter(program.name(), line, err, debug);
    process.stderr.write(`${program.name()}: error: ${line}\n`);
    if (debug && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  };
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    // commander has printed its message (or the help) already
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : EXIT_USAGE;
    if (err instanceof UserError) {
      report(err.message, err);
      return err.exitCode;
    }
    for (const [type, code] of userErrors) {
      if (err instanceof type) {
        report(err.message, err);
        return code;
      }
    }
    const fsMessage = fileSystemMessage(err as NodeJS.ErrnoException);
    if (fsMessage) {
      report(fsMessage, err);
      return EXIT_USAGE;
    }
    const message = err instanceof Error ? err.message : String(err);
    report(debug ? message : `${message} (unexpected: rerun with --debug for the stack trace, and report it)`, err);
    return EXIT_FAILURE;
  }
}

/** Writes a line to stdout, waiting when it is full (a pipe into a slow reader). */
export function emit(line: string): Promise<void> | void {
  if (!process.stdout.write(`${line}\n`)) return new Promise((resolve) => process.stdout.once('drain', () => resolve()));
}

/** A warning on stderr, `pretrain: warning: ...`. */
export function warn(message: string): void {
  console.error(`pretrain: warning: ${message}`);
}
