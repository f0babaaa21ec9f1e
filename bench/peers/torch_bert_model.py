"""The BERT MLM shape our presets build, in PyTorch, shared by the peer benchmarks
(torch_bert_train.py: one process; torch_ddp_train.py: DistributedDataParallel over gloo).

L<layers>-H<hidden> as our presets (heads = hidden / 64, intermediate = 4 hidden), token,
segment and position embeddings, post-norm encoder blocks with GELU and dropout 0.1, the MLM
head (dense, GELU, LayerNorm, the tied token embedding, a bias) at 15% of the positions.
"""
import torch
import torch.nn as nn


class BertMlm(nn.Module):
    def __init__(self, vocab, hidden, layers):
        super().__init__()
        self.hidden = hidden
        self.token = nn.Embedding(vocab, hidden)
        self.segment = nn.Embedding(2, hidden)
        self.position = nn.Embedding(512, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.drop = nn.Dropout(0.1)
        block = nn.TransformerEncoderLayer(hidden, hidden // 64, 4 * hidden, 0.1, activation='gelu', batch_first=True, layer_norm_eps=1e-12)
        self.encoder = nn.TransformerEncoder(block, layers)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=1e-12))
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, ids, segments, targets_at):
        x = self.token(ids) + self.segment(segments) + self.position.weight[: ids.shape[1]]
        x = self.encoder(self.drop(self.norm(x)))
        h = self.head(x.reshape(-1, self.hidden)[targets_at])
        return h @ self.token.weight.t() + self.bias


def random_batch(vocab, batch, seq, generator):
    """Token ids, segments, the 15% target positions and their labels of a batch of `batch` x `seq`."""
    ids = torch.randint(5, vocab, (batch, seq), generator=generator)
    segments = torch.zeros(batch, seq, dtype=torch.long)
    targets_at = torch.randperm(batch * seq, generator=generator)[: batch * seq * 15 // 100]
    labels = torch.randint(5, vocab, (targets_at.numel(),), generator=generator)
    return ids, segments, targets_at, labels


def sgd_step(model, batch):
    """One training step of `model` on `batch` (random_batch's) with plain SGD: a function to call repeatedly."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    ids, segments, targets_at, labels = batch

    def step():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(ids, segments, targets_at), labels)
        loss.backward()
        optimizer.step()

    return step
