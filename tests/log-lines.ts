/** Reading the output of a process that logs JSON lines (`--log-format json`, see src/log/logger.ts). */
import { logText, parseJsonLine } from '../src/log/logger.js';

export type LogRecord = Record<string, unknown>;

/** The JSON log lines of the text (lines of anything else, a library's warning on stderr, are left out). */
export function jsonLines(text: string): LogRecord[] {
  return text.split('\n').flatMap((line) => {
    const record = parseJsonLine(line);
    return record ? [record] : [];
  });
}

/** The text as the human lines it holds: each JSON line's msg, other lines as they are. */
export function messages(text: string): string {
  return text.split('\n').map(logText).join('\n');
}
