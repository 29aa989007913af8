"""The EDSR building blocks NLSN is made of: mean shift, residual block, upsampler.

Their module trees, and so their ``state_dict`` keys, are those of EDSR's ``common.py``
(which NLSN's authors reuse), so the authors' checkpoints load with ``strict=True``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import _validation as v

__all__ = ["MeanShift", "ResBlock", "Upsampler", "RGB_MEAN", "RGB_STD", "KERNEL_SIZE", "conv", "check_scale"]

#: DIV2K's RGB mean (fraction of rgb_range); EDSR's and NLSN's MeanShift, std 1.
RGB_MEAN = (0.4488, 0.4371, 0.4040)
RGB_STD = (1.0, 1.0, 1.0)
KERNEL_SIZE = 3


def conv(c_in: int, c_out: int, kernel_size: int = KERNEL_SIZE) -> nn.Conv2d:
    """EDSR's default_conv: 'same' padding, with bias."""
    return nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=True)


def check_scale(scale) -> int:
    """The upscaling factors EDSR's upsampler can build: 3 or a power of two >= 2."""
    scale = v.check_positive_int(scale, "scale")
    if scale != 3 and (scale < 2 or scale & (scale - 1)):
        raise ValueError(f"scale must be 3 or a power of two >= 2 (2, 4, 8, ...), got {scale}")
    return scale


class MeanShift(nn.Conv2d):
    """Frozen 1x1 conv adding ``sign * rgb_range * mean / std`` per channel (EDSR's MeanShift).

    Its weight and bias are parameters with ``requires_grad=False``, as in EDSR, so they
    appear in the state_dict as ``<name>.weight`` / ``<name>.bias``.
    """

    def __init__(self, rgb_range: float, rgb_mean=RGB_MEAN, rgb_std=RGB_STD, sign: int = -1):
        super().__init__(3, 3, kernel_size=1)
        std = torch.tensor(rgb_std, dtype=torch.float32)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean, dtype=torch.float32) / std)
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    """EDSR residual block without batch norm: ``res_scale * conv(relu(conv(x))) + x``.

    Keys: ``body.0.*`` and ``body.2.*`` (the ReLU is ``body.1``).
    """

    def __init__(self, n_feats: int, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(conv(n_feats, n_feats), nn.ReLU(inplace=True), conv(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if out.requires_grad or torch.promote_types(out.dtype, x.dtype) != out.dtype:
            return out.mul(self.res_scale) + x
        # No autograd graph (inference): the same two roundings in place, in body's fresh
        # output, sparing two maps' allocations.
        return out.mul_(self.res_scale).add_(x)


class Upsampler(nn.Sequential):
    """EDSR's upsampler without activation: per factor 2, conv(n, 4n) + PixelShuffle(2);
    for scale 3, conv(n, 9n) + PixelShuffle(3). Convs at indices 0, 2, 4, ..."""

    def __init__(self, scale: int, n_feats: int):
        scale = check_scale(scale)
        layers: list[nn.Module] = []
        if scale == 3:
            layers += [conv(n_feats, 9 * n_feats), nn.PixelShuffle(3)]
        else:
            for _ in range(int(math.log2(scale))):
                layers += [conv(n_feats, 4 * n_feats), nn.PixelShuffle(2)]
        super().__init__(*layers)
