/**
 * Pinning local workers to CPUs (`coordinator start --pin-workers`). A wasm worker computes on
 * one thread; left to the scheduler, two of them on the 2-vCPU machines here computed a
 * sample up to 29% slower than one worker alone, where two processes pinned to a core each
 * lost nothing (bench:train's core ceiling). Linux only, through util-linux's `taskset`.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** CPU ids of a Linux CPU list ("0-3,6,8-9"), in order; an error names a malformed list. */
export function parseCpuList(text: string): number[] {
  const cpus: number[] = [];
  for (const part of text.trim().split(',')) {
    const range = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!range) throw new Error(`not a CPU list: "${text.trim()}"`);
    const from = Number(range[1]);
    const to = range[2] === undefined ? from : Number(range[2]);
    if (to < from) throw new Error(`not a CPU list: "${text.trim()}" (${part} runs backwards)`);
    for (let cpu = from; cpu <= to; cpu++) cpus.push(cpu);
  }
  return cpus;
}

/** Whether `cpusToPin` works here (Linux with taskset). */
export function canPinWorkers(): boolean {
  try {
    cpusToPin();
    return true;
  } catch {
    return false;
  }
}

/**
 * The CPUs local workers are pinned to, in order (worker i gets the i-th, modulo): the ones
 * this process may run on (a container's cpuset, not the machine's), read from
 * /proc/self/status. Throws, saying what to do, where pinning cannot work.
 */
export function cpusToPin(): number[] {
  let status: string;
  try {
    status = readFileSync('/proc/self/status', 'utf8');
  } catch {
    throw new Error('--pin-workers needs Linux (it reads the allowed CPUs from /proc/self/status): leave it off here');
  }
  const line = /^Cpus_allowed_list:\s*(.+)$/m.exec(status);
  if (!line) throw new Error('--pin-workers: /proc/self/status has no Cpus_allowed_list: leave it off here');
  const cpus = parseCpuList(line[1]!);
  if (spawnSync('taskset', ['-c', String(cpus[0]), 'true']).status !== 0) {
    throw new Error('--pin-workers needs `taskset` (util-linux; `apt-get install util-linux`): install it or leave the option off');
  }
  return cpus;
}
