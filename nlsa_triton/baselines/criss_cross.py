"""Criss-cross attention (CCNet, Huang et al., ICCV 2019): a baseline of the NLSN supplementary material.

The NLSN supplementary material compares NLSA with criss-cross attention, a sparse
attention whose pattern is fixed by position: a pixel attends only to the pixels of its
row and its column, and two recurrent applications give every pixel a path to every
other pixel.

This follows CCNet's official pure-PyTorch ``CrissCrossAttention`` (repository
speedinghzl/CCNet, ``cc_attention/functions.py``) operation for operation:

- ``q = query_conv(x)``, ``k = key_conv(x)`` (1x1, C -> C // reduction, with bias),
  ``v = value_conv(x)`` (1x1, C -> C, with bias); no 1/sqrt(d) scale.
- ``energy_H[h, w, h'] = q[:, h, w] . k[:, h', w]`` over pixel (h, w)'s column, with the
  self position h' = h set to -inf (so the pixel is counted once, not twice);
  ``energy_W[h, w, w'] = q[:, h, w] . k[:, h, w']`` over its row, self included.
- ONE softmax over the H + W concatenated energies; ``out = out_H + out_W`` with
  ``out_H = sum_h' a[h, w, h'] v[:, h', w]`` and ``out_W = sum_w' a[h, w, H + w'] v[:, h, w']``.
- ``gamma * out + x`` with ``gamma`` a learned scalar initialised to 0 (so a fresh module
  is the identity).
- CCNet's RCCA head applies the SAME module ``recurrence`` times (2 by default: every
  pixel then gathers information from the whole image); here that loop is part of
  ``forward``.

Differences from CCNet's code, none of which change the result: the energies are einsums
over rows and columns instead of permute/view/bmm, the -inf mask is a ``masked_fill``
instead of an added (B*W, H, H) tensor built on CUDA, and the softmax is taken in float32
for half-precision inputs. Memory is O(N * H * W * (H + W)) for the attention weights.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import _validation as v

__all__ = ["CrissCrossAttention", "criss_cross_attention"]


def criss_cross_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """One criss-cross aggregation (without the residual): (N, C, H, W) out.

    query, key: (N, d, H, W); value: (N, C, H, W). Pixel (h, w) attends to its column
    without itself and its row with itself, one softmax over the H + W candidates.
    """
    h = query.shape[2]
    energy_h = torch.einsum("ndhw,ndgw->nhwg", query, key)  # column: (N, H, W, H)
    energy_w = torch.einsum("ndhw,ndhv->nhwv", query, key)  # row: (N, H, W, W)
    self_in_column = torch.eye(h, dtype=torch.bool, device=query.device).unsqueeze(1)  # (H, 1, H)
    energy_h = energy_h.masked_fill(self_in_column, float("-inf"))
    energy = torch.cat([energy_h, energy_w], dim=-1)
    softmax_dtype = torch.float64 if energy.dtype == torch.float64 else torch.float32
    attention = torch.softmax(energy, dim=-1, dtype=softmax_dtype).to(value.dtype)
    att_h, att_w = attention[..., :h], attention[..., h:]
    out_h = torch.einsum("nhwg,ncgw->nchw", att_h, value)
    out_w = torch.einsum("nhwv,nchv->nchw", att_w, value)
    return out_h + out_w


class CrissCrossAttention(nn.Module):
    """CCNet's criss-cross attention, applied ``recurrence`` times with shared weights.

    Each application: ``gamma * (out_H + out_W) + x`` where pixel (h, w) attends, with one
    softmax, to its column (itself excluded) and its row (itself included); queries and
    keys are 1x1 convs to ``channels // reduction``, values a 1x1 conv to ``channels``;
    ``gamma`` is a learned scalar starting at 0. forward: (N, C, H, W) -> (N, C, H, W).
    Parameter names are CCNet's: ``query_conv.*``, ``key_conv.*``, ``value_conv.*``,
    ``gamma`` (shape (1,)).
    """

    def __init__(self, channels: int, reduction: int = 8, recurrence: int = 2):
        super().__init__()
        channels = v.check_positive_int(channels, "channels")
        reduction = v.check_positive_int(reduction, "reduction")
        recurrence = v.check_positive_int(recurrence, "recurrence")
        if channels < reduction:
            raise ValueError(
                f"channels ({channels}) must be >= reduction ({reduction}): queries and keys "
                f"have channels // reduction channels"
            )
        self.channels, self.reduction, self.recurrence = channels, reduction, recurrence
        inner = channels // reduction
        self.query_conv = nn.Conv2d(channels, inner, kernel_size=1)
        self.key_conv = nn.Conv2d(channels, inner, kernel_size=1)
        self.value_conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        out = criss_cross_attention(self.query_conv(x), self.key_conv(x), self.value_conv(x))
        return self.gamma * out + x

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        v.check_feature_map(input, self.channels, self)
        out = input
        for _ in range(self.recurrence):
            out = self._step(out)
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}, recurrence={self.recurrence}"
