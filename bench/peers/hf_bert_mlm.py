#!/usr/bin/env python3
"""Hugging Face's BertForMaskedLM forward pass, written out in plain PyTorch (no transformers
package: Debian has none), over a folder that `pretrain convert --to safetensors` wrote:
config.json + model.safetensors with Hugging Face names and layouts (nn.Linear weights are
[out, in]). Prints the MLM probabilities for the given token ids as one JSON line, so that
they can be compared with our model's output on the same input. Run by hand, never by CI:

  /usr/bin/python3 bench/peers/hf_bert_mlm.py DIR '[[2, 7, 9, 30, 3]]' '[[0, 0, 0, 0, 0]]'
"""
import json
import math
import struct
import sys

import torch


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16}
    out = {}
    for name, e in header.items():
        if name == '__metadata__':
            continue
        begin, end = e['data_offsets']
        t = torch.frombuffer(bytearray(data[begin:end]), dtype=dtypes[e['dtype']]).reshape(e['shape'])
        out[name] = t.float()
    return out


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def main():
    folder, ids_json, segments_json = sys.argv[1], sys.argv[2], sys.argv[3]
    config = json.load(open(f'{folder}/config.json'))
    w = read_safetensors(f'{folder}/model.safetensors')
    eps = config.get('layer_norm_eps', 1e-12)
    heads = config['num_attention_heads']
    ids = torch.tensor(json.loads(ids_json))
    segments = torch.tensor(json.loads(segments_json))
    b, t = ids.shape
    ln = lambda x, p: torch.nn.functional.layer_norm(x, (x.shape[-1],), w[f'{p}.weight'], w[f'{p}.bias'], eps)
    linear = lambda x, p: x @ w[f'{p}.weight'].T + w[f'{p}.bias']  # nn.Linear: weight is [out, in]
    e = 'bert.embeddings'
    x = w[f'{e}.word_embeddings.weight'][ids] + w[f'{e}.position_embeddings.weight'][torch.arange(t)][None] + w[f'{e}.token_type_embeddings.weight'][segments]
    x = ln(x, f'{e}.LayerNorm')
    size = x.shape[-1] // heads
    for layer in range(config['num_hidden_layers']):
        p = f'bert.encoder.layer.{layer}'
        split = lambda y: y.view(b, t, heads, size).transpose(1, 2)
        q, k, v = (split(linear(x, f'{p}.attention.self.{n}')) for n in ('query', 'key', 'value'))
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(size), dim=-1) @ v
        attention = attention.transpose(1, 2).reshape(b, t, heads * size)
        x = ln(x + linear(attention, f'{p}.attention.output.dense'), f'{p}.attention.output.LayerNorm')
        x = ln(x + linear(gelu(linear(x, f'{p}.intermediate.dense')), f'{p}.output.dense'), f'{p}.output.LayerNorm')
    h = ln(gelu(linear(x, 'cls.predictions.transform.dense')), 'cls.predictions.transform.LayerNorm')
    # the decoder is tied to the word embeddings (save_pretrained leaves it out)
    logits = h @ w[f'{e}.word_embeddings.weight'].T + w['cls.predictions.bias']
    print(json.dumps(torch.softmax(logits, dim=-1).flatten().tolist()))


if __name__ == '__main__':
    main()
