"""The NLSA block, a drop-in for NLSN's ``NonLocalSparseAttention`` (docs/semantics.md §7.1).

The last step of the data path: two convolutions make x and y from the feature map, and
``functional.nlsa`` (hash, sort, chunked attention) attends. NLSN's full-attention
baseline is ``nlsa_triton.baselines.NonLocalAttention``.
"""
from __future__ import annotations

import torch
from torch import nn

from . import _validation as v
from ._backend import check_backend
# forward() names the feature-map check by this private name.
from ._validation import check_feature_map as _check_feature_map
from .functional import nlsa


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
        v.check_channels(channels, reduction)
        self.n_hashes = v.check_positive_int(n_hashes, "n_hashes")
        self.chunk_size = v.check_positive_int(chunk_size, "chunk_size")
        k_size = v.check_positive_int(k_size, "k_size")
        if k_size % 2 == 0:
            raise ValueError(
                f"k_size must be odd (conv_match pads by k_size // 2 to keep H x W), got {k_size}"
            )
        self.channels, self.reduction, self.k_size = channels, reduction, k_size
        self.res_scale = v.check_res_scale(res_scale)
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
        # Views of the maps, not contiguous copies: the torch backend's key norms reduce
        # over x's strides, so a copy would change their last bits.
        x = self.conv_match(input).flatten(2).transpose(1, 2)
        y = self.conv_assembly(input).flatten(2).transpose(1, 2)
        out = nlsa(
            x, y, n_hashes=self.n_hashes, chunk_size=self.chunk_size,
            rotations=rotations, generator=generator, backend=self.backend,
        )
        del x, y  # free before the residual step, not after it
        out = out.transpose(1, 2).reshape(n, c, h, w)
        if out.requires_grad or torch.promote_types(out.dtype, input.dtype) != out.dtype:
            return out * self.res_scale + input
        # No autograd graph to keep, and the result has out's dtype: the same two roundings
        # (times res_scale, plus input) in place in nlsa's fresh output, which is returned
        # in the layout the out-of-place expression gives (channels-last strides).
        return out.mul_(self.res_scale).add_(input)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, n_hashes={self.n_hashes}, chunk_size={self.chunk_size}, "
            f"reduction={self.reduction}, k_size={self.k_size}, res_scale={self.res_scale}, "
            f"backend={self.backend!r}"
        )
