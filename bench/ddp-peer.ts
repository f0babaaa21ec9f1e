/**
 * bench:train's optional peer (`--peer <python>`): PyTorch's DistributedDataParallel on the
 * same model shape and global batch (bench/peers/torch_ddp_train.py), one round of 1 and 2
 * processes after each of our rounds, so that both meet the machine in the same minutes.
 * Never required: without PyTorch the benchmark says so and goes on without the peer.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const SCRIPT = fileURLToPath(new URL('../../bench/peers/torch_ddp_train.py', import.meta.url));

export interface PeerRound {
  /** Tokens/s of every position of the global batch, by process count. */
  readonly tokensPerSec: Record<string, number>;
}

export interface PeerJob {
  readonly python: string;
  readonly preset: string;
  readonly vocab: number;
  readonly seq: number;
  readonly globalBatch: number;
  readonly steps: number;
}

/** One round of the peer; rejects with what to install when PyTorch is missing or the script fails. */
export function runPeerRound(job: PeerJob): Promise<PeerRound> {
  const shape = /^L(\d+)-H(\d+)$/.exec(job.preset);
  if (!shape) return Promise.reject(new Error(`the peer needs a preset of the form L<layers>-H<hidden>, not ${job.preset}`));
  const args = [SCRIPT, '--ranks', '1,2', '--rounds', '1', '--layers', shape[1]!, '--hidden', shape[2]!, '--vocab', String(job.vocab), '--seq', String(job.seq), '--global-batch', String(job.globalBatch), '--steps', String(job.steps)];
  return new Promise((resolve, reject) => {
    const child = spawn(job.python, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    // a hung peer must not hang the benchmark
    const timer = setTimeout(() => child.kill('SIGKILL'), 20 * 60_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${job.python}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const last = out.trim().split('\n').pop() ?? '';
      if (code !== 0) {
        const missing = /No module named 'torch'/.test(err) ? ' (PyTorch is missing: apt-get install -y python3-torch libopenblas0-pthread)' : '';
        reject(new Error(`${job.python} ${SCRIPT} ${signal ? `was killed (${signal})` : `exited ${code}`}${missing}: ${err.trim().split('\n').pop() ?? ''}`));
        return;
      }
      try {
        const figures = JSON.parse(last) as { ddpTokensPerSec?: Record<string, number> };
        if (!figures.ddpTokensPerSec) throw new Error('no ddpTokensPerSec');
        resolve({ tokensPerSec: figures.ddpTokensPerSec });
      } catch (e) {
        reject(new Error(`the peer's last line is not its JSON figures (${(e as Error).message}): ${last.slice(0, 200)}`));
      }
    });
  });
}
