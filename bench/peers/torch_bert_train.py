"""The peer figure for bench:train: PyTorch training the same BERT MLM shape on this machine's
cores (run by hand in the same session as `npm run bench:train`; never by CI or tests).

    apt-get install -y python3-torch libopenblas0-pthread   # Debian
    /usr/bin/python3 bench/peers/torch_bert_train.py --threads 2

The model is torch_bert_model.py's (our presets' shape), trained with
plain SGD (cheaper than our AdaFactor, so the comparison favours PyTorch). Tokens/s counts
every position of the batch, as bench:train counts the records' tokens. Prints one line per
measured step and a last JSON line {"torchTokensPerSec": x, ...}.
"""
import argparse
import json
import os
import time

from bert_shape import add_shape_arguments

parser = argparse.ArgumentParser()
add_shape_arguments(parser)
parser.add_argument('--batch', type=int, default=16)
parser.add_argument('--steps', type=int, default=5)
parser.add_argument('--threads', type=int, default=os.cpu_count())
args = parser.parse_args()
# OpenBLAS sizes its own thread pool from the environment, before torch loads it
os.environ.setdefault('OPENBLAS_NUM_THREADS', str(args.threads))
os.environ.setdefault('OMP_NUM_THREADS', str(args.threads))

import torch  # noqa: E402
from torch_bert_model import BertMlm, random_batch, sgd_step  # noqa: E402

torch.set_num_threads(args.threads)
torch.manual_seed(0)
V, H, L, S, B = args.vocab, args.hidden, args.layers, args.seq, args.batch


step = sgd_step(BertMlm(V, H, L), random_batch(V, B, S, torch.Generator().manual_seed(0)))


step()  # warm-up
times = []
for i in range(args.steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
    print(f'step {i + 1}: {times[-1] * 1000:.0f} ms')
seconds = sorted(times)[len(times) // 2]
tokens_per_sec = B * S / seconds
print(f'PyTorch {torch.__version__}, L{L}-H{H}, vocab {V}, batch {B} x {S}, {args.threads} thread(s): {seconds * 1000:.0f} ms/step, {tokens_per_sec:.0f} tokens/s (median of {args.steps})')
print(json.dumps({'torchTokensPerSec': round(tokens_per_sec), 'threads': args.threads, 'msPerStep': round(seconds * 1000)}))
