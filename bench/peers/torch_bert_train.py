"""The peer figure for bench:train: PyTorch training the same BERT MLM shape on this machine's
cores (run by hand in the same session as `npm run bench:train`; never by CI or tests).

    apt-get install -y python3-torch libopenblas0-pthread   # Debian
    /usr/bin/python3 bench/peers/torch_bert_train.py --threads 2

L<layers>-H<hidden> as our presets (heads = hidden / 64, intermediate = 4 hidden), token,
segment and position embeddings, post-norm encoder blocks with GELU and dropout 0.1, the MLM
head (dense, GELU, LayerNorm, the tied token embedding, a bias) at 15% of the positions, and
plain SGD (cheaper than our AdaFactor, so the comparison favours PyTorch). Tokens/s counts
every position of the batch, as bench:train counts the records' tokens. Prints one line per
measured step and a last JSON line {"torchTokensPerSec": x, ...}.
"""
import argparse
import json
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument('--layers', type=int, default=4)
parser.add_argument('--hidden', type=int, default=256)
parser.add_argument('--vocab', type=int, default=21128)
parser.add_argument('--seq', type=int, default=128)
parser.add_argument('--batch', type=int, default=16)
parser.add_argument('--steps', type=int, default=5)
parser.add_argument('--threads', type=int, default=os.cpu_count())
args = parser.parse_args()
# OpenBLAS sizes its own thread pool from the environment, before torch loads it
os.environ.setdefault('OPENBLAS_NUM_THREADS', str(args.threads))
os.environ.setdefault('OMP_NUM_THREADS', str(args.threads))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

torch.set_num_threads(args.threads)
torch.manual_seed(0)
V, H, L, S, B = args.vocab, args.hidden, args.layers, args.seq, args.batch


class BertMlm(nn.Module):
    def __init__(self):
        super().__init__()
        self.token = nn.Embedding(V, H)
        self.segment = nn.Embedding(2, H)
        self.position = nn.Embedding(512, H)
        self.norm = nn.LayerNorm(H, eps=1e-12)
        self.drop = nn.Dropout(0.1)
        block = nn.TransformerEncoderLayer(H, H // 64, 4 * H, 0.1, activation='gelu', batch_first=True, layer_norm_eps=1e-12)
        self.encoder = nn.TransformerEncoder(block, L)
        self.head = nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.LayerNorm(H, eps=1e-12))
        self.bias = nn.Parameter(torch.zeros(V))

    def forward(self, ids, segments, targets_at):
        x = self.token(ids) + self.segment(segments) + self.position.weight[: ids.shape[1]]
        x = self.encoder(self.drop(self.norm(x)))
        h = self.head(x.reshape(-1, H)[targets_at])
        return h @ self.token.weight.t() + self.bias


model = BertMlm()
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
ids = torch.randint(5, V, (B, S))
segments = torch.zeros(B, S, dtype=torch.long)
targets_at = torch.randperm(B * S)[: B * S * 15 // 100]
labels = torch.randint(5, V, (targets_at.numel(),))


def step():
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(ids, segments, targets_at), labels)
    loss.backward()
    optimizer.step()


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
