"""NLSN's full non-local attention baseline (docs/semantics.md §7.2), with NLSN's parameter names."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validation as v

__all__ = ["NonLocalAttention"]


def _conv1x1_prelu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.PReLU())


class NonLocalAttention(nn.Module):
    """NLSN's full non-local attention baseline: ``softmax(theta phi^T) g + res_scale * input``.

    theta, phi: 1x1 conv + PReLU to C // reduction; g: 1x1 conv + PReLU to C; no
    1/sqrt(d) scale. Computed through ``scaled_dot_product_attention`` (scale 1), so the
    (L, L) score matrix is materialised only where torch has no fused kernel.
    Parameter names are NLSN's (``conv_match1.*``, ``conv_match2.*``, ``conv_assembly.*``).
    The channel count is ``channels``, as for every module of this package, or ``channel``,
    NLSN's own name for it here (default 128, NLSN's).
    """

    def __init__(self, channel: int | None = None, reduction: int = 2, res_scale: float = 1, *,
                 channels: int | None = None):
        super().__init__()
        if channel is not None and channels is not None and channel != channels:
            raise ValueError(f"channel ({channel}) and channels ({channels}) name the same count; give one")
        given = "channel" if channel is not None else "channels"
        channel = 128 if channel is None and channels is None else (channels if channel is None else channel)
        v.check_channels(channel, reduction, given)  # the error names the argument the caller used
        self.channel, self.reduction, self.res_scale = channel, reduction, v.check_res_scale(res_scale)
        self.channels = channel
        self.conv_match1 = _conv1x1_prelu(channel, channel // reduction)
        self.conv_match2 = _conv1x1_prelu(channel, channel // reduction)
        self.conv_assembly = _conv1x1_prelu(channel, channel)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        v.check_feature_map(input, self.channel, self)
        n, c, h, w = input.shape
        theta = self.conv_match1(input).flatten(2).transpose(1, 2)
        phi = self.conv_match2(input).flatten(2).transpose(1, 2)
        g = self.conv_assembly(input).flatten(2).transpose(1, 2)
        out = F.scaled_dot_product_attention(theta, phi, g, scale=1.0)
        return out.transpose(1, 2).reshape(n, c, h, w) + self.res_scale * input

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}, res_scale={self.res_scale}"
