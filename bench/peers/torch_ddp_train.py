"""The peer figure for bench:train's scaling efficiency: PyTorch DistributedDataParallel over
gloo on 127.0.0.1, one process per core with one thread each (as our workers: one wasm thread
a process), training the same BERT MLM shape (torch_bert_model.py) at the same global batch,
with 1 process and with 2, pinned to a CPU each. Run by hand in the same session as
`npm run bench:train`; never by CI or tests.

    apt-get install -y python3-torch libopenblas0-pthread   # Debian
    /usr/bin/python3 bench/peers/torch_ddp_train.py --ranks 1,2 --rounds 3

DDP is the reference for hiding communication: it all-reduces gradient buckets while the
backward pass still runs. The optimizer is plain SGD (its update costs little, so the
replicated update that AdaFactor pays on every rank is not counted against PyTorch). Each
rank computes global batch / ranks sequences; tokens/s counts every position of the global
batch. Prints a table, the scaling efficiency (2 ranks over twice 1, per round and median),
and a last JSON line {"ddpTokensPerSec": {"1": x, "2": y}, "ddpScalingEfficiency": e, ...}.
"""
import argparse
import json
import os
import socket
import statistics
import time

from bert_shape import add_shape_arguments

parser = argparse.ArgumentParser()
add_shape_arguments(parser)
parser.add_argument('--global-batch', type=int, default=16)
parser.add_argument('--steps', type=int, default=10)
parser.add_argument('--ranks', default='1,2')
parser.add_argument('--rounds', type=int, default=3)
parser.add_argument('--no-pin', action='store_true', help='leave the ranks to the scheduler (default: rank r on CPU r)')
args = parser.parse_args()
# one thread per process, set before torch loads OpenBLAS
os.environ['OPENBLAS_NUM_THREADS'] = '1'
os.environ['OMP_NUM_THREADS'] = '1'

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from torch_bert_model import BertMlm, random_batch, sgd_step  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def rank_main(rank, n, port, out):
    torch.set_num_threads(1)
    cpus = sorted(os.sched_getaffinity(0))
    if not args.no_pin and len(cpus) >= n:
        os.sched_setaffinity(0, {cpus[rank]})
    torch.manual_seed(0)
    model = BertMlm(args.vocab, args.hidden, args.layers)
    if n > 1:
        os.environ['MASTER_ADDR'] = '127.0.0.1'
        os.environ['MASTER_PORT'] = str(port)
        dist.init_process_group('gloo', rank=rank, world_size=n)
        model = DistributedDataParallel(model)
    per_rank = args.global_batch // n
    step = sgd_step(model, random_batch(args.vocab, per_rank, args.seq, torch.Generator().manual_seed(rank)))

    step()  # warm-up
    if n > 1:
        dist.barrier()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if n > 1:
        dist.barrier()
    seconds = time.perf_counter() - started
    if rank == 0:
        out.put(per_rank * n * args.seq * args.steps / seconds)
    if n > 1:
        dist.destroy_process_group()


def run(n):
    ctx = mp.get_context('spawn')
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=rank_main, args=(r, n, port, out)) for r in range(n)]
    for p in procs:
        p.start()
    tokens_per_sec = out.get(timeout=600)
    for p in procs:
        p.join(timeout=60)
    return tokens_per_sec


def main():
    counts = [int(c) for c in args.ranks.split(',')]
    results = {n: [] for n in counts}
    for round_ in range(args.rounds):
        # alternate the order, as bench:train does: the machine's speed drifts within minutes
        for n in (counts if round_ % 2 == 0 else list(reversed(counts))):
            results[n].append(run(n))
            print(f'round {round_ + 1}/{args.rounds}, {n} rank(s): {results[n][-1]:.0f} tokens/s', flush=True)
    median = {n: statistics.median(v) for n, v in results.items()}
    print(f'\nPyTorch {torch.__version__} DDP (gloo, 1 thread a rank{", unpinned" if args.no_pin else ", pinned"}), L{args.layers}-H{args.hidden}, vocab {args.vocab}, seq {args.seq}, global batch {args.global_batch}, SGD; medians of {args.rounds} round(s)')
    print('ranks  tokens/s  each round')
    print('-----  --------  ----------')
    for n in counts:
        print(f'{n:<5}  {median[n]:8.0f}  {" / ".join(f"{t:.0f}" for t in results[n])}')
    figures = {'ddpTokensPerSec': {str(n): round(median[n]) for n in counts}}
    if 1 in results and 2 in results:
        per_round = [two / (2 * one) for one, two in zip(results[1], results[2])]
        figures['ddpScalingEfficiency'] = round(statistics.median(per_round), 3)
        figures['ddpScalingEfficiencyPerRound'] = [round(e, 3) for e in per_round]
        print(f'\nscaling efficiency, 2 ranks against twice 1: {figures["ddpScalingEfficiency"]:.3f} (median; each round: {" / ".join(f"{e:.3f}" for e in per_round)})')
    print(f'reproduce: /usr/bin/python3 bench/peers/torch_ddp_train.py --ranks {args.ranks} --rounds {args.rounds} --global-batch {args.global_batch} --steps {args.steps}{" --no-pin" if args.no_pin else ""}')
    print(json.dumps(figures))


if __name__ == '__main__':
    main()
