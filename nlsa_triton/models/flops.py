"""The analytic FLOP count of an NLSN forward pass (``NLSN.flops``).

2 FLOPs per multiply-accumulate (torch.utils.flop_counter's convention); biases,
activations, PixelShuffle, softmax exponentials and normalisations are not counted. The
count is of the algorithm, so it is the same for every backend; the tests hold it to
``FlopCounterMode`` on the pure-torch path.
"""
from __future__ import annotations

from torch import nn

from .. import _validation as v
from ..chunks import chunk_layout
from ..hashing import num_buckets
from ..modules import NonLocalSparseAttention
from .edsr import ResBlock

__all__ = ["nlsn_flops"]


def conv_flops(conv: nn.Conv2d, pixels: int, batch: int) -> int:
    kh, kw = conv.kernel_size
    return 2 * batch * pixels * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw


def attention_flops(block: NonLocalSparseAttention, length: int, batch: int) -> int:
    """NLSA's hash projections x @ rotations (2 * L * d * B/2 per round) and its chunked
    attention (2 * (L + P) * 3K * (d + c) per round: each of the L + P sorted rows, the P
    padding rows included since NLSN computes them too, scores 3K candidates, duplicates
    counted, K = min(chunk_size, L)). Its embedding convs are counted as convs."""
    d, c = block.conv_match[0].out_channels, block.conv_assembly[0].out_channels
    layout = chunk_layout(length, block.chunk_size)
    sorted_rows, keys = layout.n_chunks * layout.chunk, 3 * layout.chunk
    half = num_buckets(length, block.chunk_size) // 2
    return 2 * batch * block.n_hashes * (length * d * half + sorted_rows * keys * (d + c))


def nlsn_flops(model, height: int, width: int, batch: int = 1) -> dict[str, int]:
    """``conv`` (every convolution: the MeanShifts and NLSA's embedding convs included),
    ``attention`` (see ``attention_flops``) and ``total`` for a (batch, 3, height, width) input."""
    h, w = v.check_positive_int(height, "height"), v.check_positive_int(width, "width")
    batch = v.check_positive_int(batch, "batch")
    length = h * w
    conv = conv_flops(model.sub_mean, length, batch) + conv_flops(model.head[0], length, batch)
    attention = 0
    for m in model.body:
        if isinstance(m, NonLocalSparseAttention):
            conv += conv_flops(m.conv_match[0], length, batch) + conv_flops(m.conv_assembly[0], length, batch)
            attention += attention_flops(m, length, batch)
        elif isinstance(m, ResBlock):
            conv += conv_flops(m.body[0], length, batch) + conv_flops(m.body[2], length, batch)
        else:
            conv += conv_flops(m, length, batch)
    pixels = length
    for m in model.tail[0]:  # the upsampler: convs at the current size, each PixelShuffle enlarges it
        if isinstance(m, nn.Conv2d):
            conv += conv_flops(m, pixels, batch)
        else:
            pixels *= m.upscale_factor ** 2
    conv += conv_flops(model.tail[1], pixels, batch) + conv_flops(model.add_mean, pixels, batch)
    return {"conv": conv, "attention": attention, "total": conv + attention}
