"""NLSN, the Non-Local Sparse Network (Mei, Fan, Zhou, CVPR 2021), with its checkpoint layout.

The network is EDSR (``edsr.py``) with Non-Local Sparse Attention blocks in its body:

    sub_mean -> head (3x3 conv) -> body -> (+ head output) -> tail (upsampler, 3x3 conv) -> add_mean

    body = [NLSA, 8 x ResBlock, NLSA, 8 x ResBlock, NLSA, ..., 3x3 conv]

(an NLSA after every 8th residual block; with the paper's 32 blocks that is 5 NLSA blocks
and 38 body entries: NLSA at 0, 9, 18, 27, 36, the conv at 37). The module tree and
therefore the ``state_dict`` keys are those of the authors' code
(HarukiYqM/Non-Local-Sparse-Attention, ``model/nlsn.py`` and ``model/common.py``), so
their ``.pt`` files load with ``strict=True``::

    sub_mean.weight/bias           MeanShift, a frozen 1x1 conv (-rgb_range * DIV2K mean)
    head.0.weight/bias             3x3 conv, n_colors -> n_feats
    body.<i>.conv_match.0.*        NLSA blocks (and body.<i>.conv_assembly.0.*)
    body.<i>.body.0.* / body.2.*   ResBlock: conv, ReLU, conv; res_scale * body(x) + x
    body.<last>.weight/bias        3x3 conv closing the body
    tail.0.<k>.weight/bias         upsampler convs: k = 0, 2, 4, ... (PixelShuffle between)
    tail.1.weight/bias             3x3 conv, n_feats -> n_colors
    add_mean.weight/bias           MeanShift back (+rgb_range * DIV2K mean)

Reading checkpoints (wrapped, prefixed, .safetensors) is ``checkpoint.py``; the FLOP
count is ``flops.py``.

Memory at inference: without an autograd graph (``torch.no_grad`` / ``inference_mode``,
or nothing requiring grad) the residual adds run in place and, on the CPU, the tail runs a
strip of rows at a time (``strips.py``), with the same bits as the graph-building path.
The paper's NLSN upscaling a 600x512 photo x2 on the CPU then peaks at 2.1 GB of RSS
instead of 4.0 GB (``bench/results/cpu/upscale.md``).

Randomness: NLSN draws fresh LSH rotations in every NLSA call. ``forward`` takes a
``torch.Generator`` (used by the NLSA blocks in body order) or explicit per-block
rotations, so a forward pass can be repeated exactly, on any backend.
"""
from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .. import _validation as v
from .._backend import check_backend
from ..modules import NonLocalSparseAttention
from . import checkpoint
from .edsr import RGB_MEAN, MeanShift, ResBlock, Upsampler, check_scale, conv
from .flops import nlsn_flops
from .strips import run_in_strips

# The EDSR names stay importable from here, where they were defined before edsr.py.
__all__ = ["NLSN", "MeanShift", "ResBlock", "Upsampler", "RGB_MEAN", "NLSA_EVERY"]

#: An NLSA block follows every NLSA_EVERY-th residual block (NLSN's ``(i + 1) % 8 == 0``).
NLSA_EVERY = 8
#: NLSA's match-embedding channel reduction in NLSN.
NLSA_REDUCTION = 4


class NLSN(nn.Module):
    """Non-Local Sparse Network for single-image super-resolution.

    Args:
        scale: upscaling factor, 2, 3, 4 (or another power of two).
        n_feats: feature channels (paper: 256); must be divisible by 4 (NLSA's reduction).
        n_resblocks: residual blocks (paper: 32); an NLSA block opens the body and follows
            every 8th residual block.
        n_hashes, chunk_size: NLSA's hash rounds and chunk size (paper: 4, 144).
        res_scale: residual scaling of the residual blocks AND of the NLSA blocks (NLSN
            passes its ``res_scale`` to both; paper: 0.1).
        rgb_range: pixel range the network sees: inputs in [0, rgb_range]; it sets the
            MeanShift biases (the authors train and test with ``--rgb_range 1``).
        n_colors: image channels; must be 3 (MeanShift is RGB).
        backend: the NLSA blocks' backend, one of nlsa_triton's backend names ("auto" by
            default: the Triton kernels for CUDA tensors).

    ``forward(x, *, generator=None, rotations=None)``: x (N, n_colors, H, W) in
    [0, rgb_range] -> (N, n_colors, scale * H, scale * W).
    """

    def __init__(
        self,
        scale: int,
        n_feats: int = 256,
        n_resblocks: int = 32,
        n_hashes: int = 4,
        chunk_size: int = 144,
        res_scale: float = 0.1,
        rgb_range: float = 1,
        n_colors: int = 3,
        backend: str = "auto",
    ):
        super().__init__()
        scale = check_scale(scale)
        n_feats = v.check_positive_int(n_feats, "n_feats")
        n_resblocks = v.check_positive_int(n_resblocks, "n_resblocks")
        if n_feats % NLSA_REDUCTION:
            raise ValueError(f"n_feats must be divisible by {NLSA_REDUCTION} (NLSA's reduction), got {n_feats}")
        if n_colors != 3:
            raise ValueError(f"n_colors must be 3 (NLSN's MeanShift is RGB), got {n_colors!r}")
        if not isinstance(rgb_range, numbers.Real) or isinstance(rgb_range, bool) or not rgb_range > 0:
            raise ValueError(f"rgb_range must be a positive number, got {rgb_range!r}")
        check_backend(backend)
        self.scale, self.n_feats, self.n_resblocks = scale, n_feats, n_resblocks
        self.n_hashes, self.chunk_size, self.res_scale = n_hashes, chunk_size, res_scale
        self.rgb_range, self.n_colors = rgb_range, n_colors

        def attention() -> NonLocalSparseAttention:
            return NonLocalSparseAttention(
                channels=n_feats, n_hashes=n_hashes, chunk_size=chunk_size,
                reduction=NLSA_REDUCTION, res_scale=res_scale, backend=backend,
            )

        body: list[nn.Module] = [attention()]
        for i in range(n_resblocks):
            body.append(ResBlock(n_feats, res_scale))
            if (i + 1) % NLSA_EVERY == 0:
                body.append(attention())
        body.append(conv(n_feats, n_feats))
        # Registration order as in NLSN (sub_mean, add_mean, head, body, tail), so that
        # state_dict() and parameters() list in the authors' order.
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(conv(n_colors, n_feats))
        self.body = nn.Sequential(*body)
        self.tail = nn.Sequential(Upsampler(scale, n_feats), conv(n_feats, n_colors))

    @property
    def attention_blocks(self) -> list[NonLocalSparseAttention]:
        """The NLSA blocks in body order (the order ``forward`` draws rotations in)."""
        return [m for m in self.body if isinstance(m, NonLocalSparseAttention)]

    @property
    def backend(self) -> str:
        """The backend of every NLSA block. Assigning it is ``set_backend``; a model whose
        blocks were given different backends one by one raises ``ValueError`` here."""
        backends = sorted({m.backend for m in self.attention_blocks})
        if len(backends) > 1:
            raise ValueError(
                f"NLSN's NLSA blocks have different backends {backends}; call set_backend() to choose one"
            )
        return backends[0]

    @backend.setter
    def backend(self, backend: str) -> None:
        self.set_backend(backend)

    def set_backend(self, backend: str) -> "NLSN":
        """Switch every NLSA block to ``backend``; returns self."""
        check_backend(backend)
        for m in self.attention_blocks:
            m.backend = backend
        return self

    def forward(
        self,
        x: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        rotations: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """x (N, n_colors, H, W) in [0, rgb_range] -> (N, n_colors, scale*H, scale*W).

        ``generator`` (on x's device) supplies every NLSA block's rotations, block by
        block in body order; ``rotations`` gives them explicitly, one entry (a tensor of
        shape (n_feats // 4, n_hashes, n_buckets // 2), or None for a fresh draw) per
        NLSA block. With neither, each block draws from torch's global RNG, as NLSN does.
        """
        v.check_float_tensor(x, "x", 4, "(N, C, H, W)")
        if x.shape[1] != self.n_colors:
            raise ValueError(f"x must have {self.n_colors} channels (N, C, H, W), got shape {tuple(x.shape)}")
        n_attention = len(self.attention_blocks)
        if rotations is None:
            rotations = [None] * n_attention
        elif len(rotations) != n_attention:
            raise ValueError(
                f"rotations must hold one entry per NLSA block ({n_attention}), got {len(rotations)}"
            )
        rotations = iter(rotations)

        x = self.head(self.sub_mean(x))
        res = x
        for m in self.body:
            if isinstance(m, NonLocalSparseAttention):
                res = m(res, rotations=next(rotations), generator=generator)
            else:
                res = m(res)
        if res.requires_grad or torch.promote_types(res.dtype, x.dtype) != res.dtype or torch.compiler.is_compiling():
            return self.add_mean(self.tail(res + x))
        # No autograd graph (inference): the global skip in place, in the body's last
        # output, and the tail (the largest maps) a strip of rows at a time on the CPU,
        # with the same bits (strips.py).
        res = res.add_(x)
        del x
        out = run_in_strips(self.tail, res)
        return self.add_mean(self.tail(res) if out is None else out)

    def flops(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        """Analytic FLOP count of one forward on a (batch, 3, height, width) input:
        ``conv``, ``attention`` and ``total``, 2 per multiply-accumulate (see ``flops.py``)."""
        return nlsn_flops(self, height, width, batch)

    def extra_repr(self) -> str:
        return (
            f"scale={self.scale}, n_feats={self.n_feats}, n_resblocks={self.n_resblocks}, "
            f"n_hashes={self.n_hashes}, chunk_size={self.chunk_size}, res_scale={self.res_scale}, "
            f"rgb_range={self.rgb_range}"
        )

    # -- checkpoints -----------------------------------------------------------------

    @staticmethod
    def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
        """scale, n_feats, n_resblocks, n_colors and rgb_range from an NLSN state_dict's shapes.

        Accepts the same wrapped forms as ``from_state_dict``. Raises ``ValueError`` (naming
        what is wrong) for a state_dict that is not NLSN's. n_hashes, chunk_size and res_scale
        are not stored in a checkpoint.
        """
        return checkpoint.infer_config(checkpoint.unwrap_state_dict(state_dict))

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        *,
        n_hashes: int = 4,
        chunk_size: int = 144,
        res_scale: float = 0.1,
        backend: str = "auto",
    ) -> "NLSN":
        """An NLSN with the configuration ``infer_config`` reads from ``state_dict``, loaded
        with ``strict=True``.

        Accepts a bare state_dict (the authors' checkpoints), one wrapped under
        ``params_ema``, ``params``, ``state_dict``, ``model`` or ``model_state_dict``, and
        DataParallel's ``module.`` prefix. n_hashes, chunk_size and res_scale are not in a
        checkpoint: the defaults are the paper's. Raises ``ValueError``, naming the missing
        keys, when it is not an NLSN state_dict.
        """
        state_dict = checkpoint.unwrap_state_dict(state_dict)
        config = checkpoint.infer_config(state_dict)
        model = cls(
            config["scale"], n_feats=config["n_feats"], n_resblocks=config["n_resblocks"],
            n_hashes=n_hashes, chunk_size=chunk_size, res_scale=res_scale,
            rgb_range=config["rgb_range"], n_colors=config["n_colors"], backend=backend,
        )
        checkpoint.check_state_dict(model.state_dict(), state_dict, config)
        model.load_state_dict(state_dict, strict=True)
        return model

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        *,
        n_hashes: int = 4,
        chunk_size: int = 144,
        res_scale: float = 0.1,
        backend: str = "auto",
    ) -> "NLSN":
        """``from_state_dict`` on a checkpoint file (``.pt``/``.pth``, or ``.safetensors``), on the CPU.

        Raises FileNotFoundError for a missing file and ValueError (with the path) for a
        file that is not a checkpoint or not NLSN's. The upscaling CLI and the spandrel
        integration load checkpoints through this.
        """
        obj = checkpoint.read_checkpoint(path)
        try:
            return cls.from_state_dict(
                obj, n_hashes=n_hashes, chunk_size=chunk_size, res_scale=res_scale, backend=backend
            )
        except ValueError as e:
            raise ValueError(f"{os.fspath(path)}: {e}") from e
