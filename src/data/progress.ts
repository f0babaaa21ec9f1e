import { SingleBar } from 'cli-progress';

/** Where progress goes: a terminal gets a bar, anything else a line every `logEverySeconds`. */
export interface ProgressStream {
  readonly isTTY?: boolean;
  write(text: string): unknown;
}

export interface PrepareProgress {
  /** For `PrepareOptions.onProgress`. */
  onProgress(bytesRead: number, bytesTotal: number, instances: number): void;
  /** Ends the bar (call once prepare is done or failed). */
  stop(): void;
}

/**
 * `pretrain prepare`'s progress. The bar starts on the first report, which carries the
 * corpus's real size: started earlier it would show `100% | 0/0 MB` until then.
 */
export function prepareProgress(stream: ProgressStream & NodeJS.WritableStream, options: { logEverySeconds?: number } = {}): PrepareProgress {
  const logEvery = options.logEverySeconds ?? 10;
  const started = performance.now();
  const bar = stream.isTTY ? new SingleBar({ stream, format: 'prepare [{bar}] {percentage}% | {value}/{total} MB | {instances} instances | {rate} MB/s | ETA {eta_formatted}', hideCursor: true }) : undefined;
  let barStarted = false;
  let lastLog = 0;
  const mb = (bytes: number) => Math.round(bytes / 1e4) / 100;
  return {
    onProgress(read, total, instances) {
      const seconds = (performance.now() - started) / 1000;
      const rate = (read / 1e6 / Math.max(seconds, 1e-3)).toFixed(1);
      if (bar) {
        if (!barStarted) {
          bar.start(mb(total), mb(read), { instances, rate });
          barStarted = true;
        } else {
          bar.setTotal(mb(total));
          bar.update(mb(read), { instances, rate });
        }
      } else if (read > 0 && seconds - lastLog >= logEvery) {
        lastLog = seconds;
        stream.write(`prepare: ${(read / 1e6).toFixed(1)}/${(total / 1e6).toFixed(1)} MB, ${instances} instances, ${rate} MB/s\n`);
      }
    },
    stop() {
      if (barStarted) bar!.stop();
    },
  };
}
