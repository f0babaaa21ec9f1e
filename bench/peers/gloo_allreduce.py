"""PyTorch gloo all_reduce of float32 buffers over ranks on 127.0.0.1: the peer figure for
bench:allreduce (run by hand in the same session; never by CI or tests).

    apt-get install -y python3-torch libopenblas0-pthread   # Debian
    python3 bench/peers/gloo_allreduce.py --ranks 2,4 --size-mib 64

Prints one line per rank count (busbw as nccl-tests defines it: algbw * 2(n-1)/n) and a JSON
line {"glooBusbw": {"2": GBps, "4": GBps}}.
"""
import argparse
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, n, port, elements, warmup, iters, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=n)
    x = torch.empty(elements, dtype=torch.float32)
    pattern = ((torch.arange(elements, dtype=torch.int64) * 7 + rank * 13) % 1024 - 512).to(torch.float32)
    expected = sum(((torch.arange(elements, dtype=torch.int64) * 7 + r * 13) % 1024 - 512) for r in range(n)).to(torch.float32)
    times = []
    correct = True
    for it in range(warmup + iters):
        x.copy_(pattern)
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(x)
        dt = time.perf_counter() - t0
        if it >= warmup:
            times.append(dt)
        correct = correct and bool(torch.equal(x, expected))
    gathered = [None] * n
    dist.all_gather_object(gathered, (times, correct))
    if rank == 0:
        slowest = [max(g[0][i] for g in gathered) for i in range(iters)]
        out.put((statistics.median(slowest), all(g[1] for g in gathered)))
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="2,4")
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=8)
    a = p.parse_args()
    size = a.size_mib << 20
    figures = {}
    ctx = mp.get_context("spawn")
    for n in [int(r) for r in a.ranks.split(",")]:
        out = ctx.Queue()
        port = free_port()
        procs = [ctx.Process(target=worker, args=(r, n, port, size // 4, a.warmup, a.iters, out)) for r in range(n)]
        for pr in procs:
            pr.start()
        t, correct = out.get(timeout=600)
        for pr in procs:
            pr.join(timeout=60)
        algbw = size / t / 1e9
        busbw = algbw * 2 * (n - 1) / n
        figures[str(n)] = round(busbw, 3)
        print(f"gloo all_reduce {a.size_mib} MiB float32, {n} ranks: {t * 1e6:.0f} us, algbw {algbw:.3f} GB/s, busbw {busbw:.3f} GB/s, {'ok' if correct else 'WRONG'} (torch {torch.__version__})")
    print(json.dumps({"glooBusbw": figures}))


if __name__ == "__main__":
    main()
