"""The model and sequence shape the PyTorch peers train, as bench:train's defaults (L4-H256,
vocabulary 21128, seq 128). Without torch: the peers set OpenBLAS's thread count from their
arguments before torch loads.
"""


def add_shape_arguments(parser):
    parser.add_argument('--layers', type=int, default=4)
    parser.add_argument('--hidden', type=int, default=256)
    parser.add_argument('--vocab', type=int, default=21128)
    parser.add_argument('--seq', type=int, default=128)
