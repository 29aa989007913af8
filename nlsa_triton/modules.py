"""Drop-in replacements for NLSN's attention modules (same parameter names)."""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from . import _validation as v
from ._backend import autocast_dtype, check_backend
from .functional import nlsa


def _check_feature_map(input, channels: int, module: nn.Module) -> None:
    """input: (N, C, H, W) float with C = channels, on the parameters' device, in their dtype
    (or any float dtype under autocast)."""
    v.check_float_tensor(input, "input", 4, "(N, C, H, W)")
    if input.shape[1] != channels:
        raise ValueError(
            f"input must have {channels} channels (N, C, H, W), got shape {tuple(input.shape)}"
        )
    weight = next(module.parameters())
    v.check_same_device(input=input, parameters=weight)
    if input.dtype != weight.dtype and autocast_dtype(input.device.type) is None:
        raise TypeError(
            f"input must have the parameters' dtype {weight.dtype} (or run under torch.autocast), "
            f"got {input.dtype}; convert one with .to()"
        )


def _check_res_scale(res_scale) -> float:
    if isinstance(res_scale, bool) or not isinstance(res_scale, numbers.Real):
        raise TypeError(f"res_scale must be a real number, got {type(res_scale).__name__} {res_scale!r}")
    return res_scale


def _check_channels(channels: int, reduction: int, name: str = "channels") -> None:
    v.check_positive_int(channels, name)
    v.check_positive_int(reduction, "reduction")
    if channels % reduction:
        raise ValueError(f"{name} ({channels}) must be divisible by reduction ({reduction})")


class NonLocalSparseAttention(nn.Module):
    """NLSN's Non-Local Sparse Attention block: ``res_scale * nlsa(x, y) + input``.

    x = conv_match(input) (C // reduction channels, k_size x k_size), y =
    conv_assembly(input) (C channels, 1x1). forward: (N, C, H, W) -> (N, C, H, W).
    Parameter names are NLSN's (``conv_match.0.*``, ``conv_assembly.0.*``), so its
    checkpoints load unchanged. ``backend``: "auto" (default: the Triton kernels for CUDA
    tensors, "torch" elsewhere), "triton", "torch" (``nlsa_triton.streaming``, streamed
    pure torch, any device) or "reference" (``nlsa_triton.reference``, the step-by-step
    oracle); ``extra_repr`` shows the setting.
    """

    def __init__(
        self,
        channels: int = 64,
        n_hashes: int = 4,
        chunk_size: int = 144,
        reduction: int = 4,
        k_size: int = 3,
        res_scale: float = 1,
        backend: str = "auto",
    ):
        super().__init__()
        _check_channels(channels, reduction)
        self.n_hashes = v.check_positive_int(n_hashes, "n_hashes")
        self.chunk_size = v.check_positive_int(chunk_size, "chunk_size")
        k_size = v.check_positive_int(k_size, "k_size")
        if k_size % 2 == 0:
            raise ValueError(
                f"k_size must be odd (conv_match pads by k_size // 2 to keep H x W), got {k_size}"
            )
        self.channels, self.reduction, self.k_size = channels, reduction, k_size
        self.res_scale = _check_res_scale(res_scale)
        self.backend = check_backend(backend)
        self.conv_match = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, k_size, padding=k_size // 2)
        )
        self.conv_assembly = nn.Sequential(nn.Conv2d(channels, channels, 1))

    def forward(
        self,
        input: torch.Tensor,
        rotations: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        _check_feature_map(input, self.channels, self)
        n, c, h, w = input.shape
        x = self.conv_match(input).flatten(2).transpose(1, 2)
        y = self.conv_assembly(input).flatten(2).transpose(1, 2)
        out = nlsa(
            x, y, n_hashes=self.n_hashes, chunk_size=self.chunk_size,
            rotations=rotations, generator=generator, backend=self.backend,
        )
        return out.transpose(1, 2).reshape(n, c, h, w) * self.res_scale + input

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, n_hashes={self.n_hashes}, chunk_size={self.chunk_size}, "
            f"reduction={self.reduction}, k_size={self.k_size}, res_scale={self.res_scale}, "
            f"backend={self.backend!r}"
        )


def _conv1x1_prelu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.PReLU())


class NonLocalAttention(nn.Module):
    """NLSN's full non-local attention baseline: ``softmax(theta phi^T) g + res_scale * input``.

    theta, phi: 1x1 conv + PReLU to C // reduction; g: 1x1 conv + PReLU to C; no
    1/sqrt(d) scale. Computed through ``scaled_dot_product_attention`` (scale 1), so the
    (L, L) score matrix is materialised only where torch has no fused kernel.
    Parameter names are NLSN's (``conv_match1.*``, ``conv_match2.*``, ``conv_assembly.*``).
    """

    def __init__(self, channel: int = 128, reduction: int = 2, res_scale: float = 1):
        super().__init__()
        _check_channels(channel, reduction, "channel")
        self.channel, self.reduction, self.res_scale = channel, reduction, _check_res_scale(res_scale)
        self.conv_match1 = _conv1x1_prelu(channel, channel // reduction)
        self.conv_match2 = _conv1x1_prelu(channel, channel // reduction)
        self.conv_assembly = _conv1x1_prelu(channel, channel)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        _check_feature_map(input, self.channel, self)
        n, c, h, w = input.shape
        theta = self.conv_match1(input).flatten(2).transpose(1, 2)
        phi = self.conv_match2(input).flatten(2).transpose(1, 2)
        g = self.conv_assembly(input).flatten(2).transpose(1, 2)
        out = F.scaled_dot_product_attention(theta, phi, g, scale=1.0)
        return out.transpose(1, 2).reshape(n, c, h, w) + self.res_scale * input

    def extra_repr(self) -> str:
        return f"channel={self.channel}, reduction={self.reduction}, res_scale={self.res_scale}"
