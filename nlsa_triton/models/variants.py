"""The four networks of NLSN's Table 1 (the attention ablation), sharing one backbone.

Each is EDSR (``edsr.py``) with an attention block, or none, at NLSN's places: one opening
the body and one after every ``NLSA_EVERY``-th residual block::

    edsr       no attention (the same body with the attention slots left out)
    edsr-nla   NonLocalAttention  (NLSN's full non-local attention, reduction 2)
    edsr-cc    CrissCrossAttention (CCNet's, reduction 8, recurrence 2)
    edsr-nlsa  NonLocalSparseAttention: exactly NLSN, the same module tree and state_dict

The attention blocks all end in ``res_scale * attention + input`` or CCNet's learned gamma,
so every variant starts as the same residual network; only what the slots hold differs.
``build_model(arch, ...)`` makes any of them (and ``nlsn``, the same as ``edsr-nlsa``);
``model_config`` gives the arguments that rebuild a model, which the trainer stores in its
checkpoints beside the state_dict.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import _validation as v
from .._backend import check_backend
from ..baselines import CrissCrossAttention, NonLocalAttention
from .edsr import MeanShift, ResBlock, Upsampler, check_scale, conv
from .nlsn import NLSA_EVERY, NLSA_REDUCTION, NLSN

__all__ = ["ARCHS", "AttentionEDSR", "build_model", "model_config"]

#: --arch names: NLSN and the four Table 1 variants.
ARCHS = ("nlsn", "edsr", "edsr-nla", "edsr-cc", "edsr-nlsa")
#: NLSN's non-local baseline reduces the match embeddings 2x; CCNet reduces 8x.
NLA_REDUCTION = 2
CC_REDUCTION = 8


class AttentionEDSR(nn.Module):
    """EDSR with ``attention`` ("none", "nla", "cc") at NLSN's attention places.

    Args as NLSN's (``scale``, ``n_feats``, ``n_resblocks``, ``res_scale``, ``rgb_range``).
    The module tree is NLSN's with the attention blocks swapped (or, for "none", left out),
    so the residual blocks of every variant have the same keys up to their body index.
    ``forward(x, *, generator=None)``: the generator is accepted, and unused, so that a
    trainer calls every variant alike.
    """

    def __init__(self, scale: int, attention: str = "none", n_feats: int = 256, n_resblocks: int = 32,
                 res_scale: float = 0.1, rgb_range: float = 1):
        super().__init__()
        if attention not in ("none", "nla", "cc"):
            raise ValueError(f"attention must be 'none', 'nla' or 'cc', got {attention!r}")
        scale = check_scale(scale)
        n_feats = v.check_positive_int(n_feats, "n_feats")
        n_resblocks = v.check_positive_int(n_resblocks, "n_resblocks")
        reduction = {"none": 1, "nla": NLA_REDUCTION, "cc": CC_REDUCTION}[attention]
        if n_feats % reduction:
            raise ValueError(f"n_feats must be divisible by {reduction} for attention {attention!r}, got {n_feats}")
        self.scale, self.n_feats, self.n_resblocks = scale, n_feats, n_resblocks
        self.attention, self.res_scale, self.rgb_range = attention, res_scale, rgb_range

        def block() -> list[nn.Module]:
            if attention == "nla":
                return [NonLocalAttention(n_feats, reduction=NLA_REDUCTION, res_scale=res_scale)]
            if attention == "cc":
                return [CrissCrossAttention(n_feats, reduction=CC_REDUCTION)]
            return []

        body: list[nn.Module] = block()
        for i in range(n_resblocks):
            body.append(ResBlock(n_feats, res_scale))
            if (i + 1) % NLSA_EVERY == 0:
                body += block()
        body.append(conv(n_feats, n_feats))
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(conv(3, n_feats))
        self.body = nn.Sequential(*body)
        self.tail = nn.Sequential(Upsampler(scale, n_feats), conv(n_feats, 3))

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        v.check_float_tensor(x, "x", 4, "(N, C, H, W)")
        x = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(self.body(x) + x))

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, attention={self.attention!r}, n_feats={self.n_feats}, "
                f"n_resblocks={self.n_resblocks}, res_scale={self.res_scale}, rgb_range={self.rgb_range}")


def build_model(arch: str, scale: int, *, n_feats: int = 256, n_resblocks: int = 32, res_scale: float = 0.1,
                rgb_range: float = 1, n_hashes: int = 4, chunk_size: int = 144, backend: str = "auto") -> nn.Module:
    """A network by its --arch name (``ARCHS``). n_hashes, chunk_size and backend concern
    the NLSA variants (nlsn, edsr-nlsa) only."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}")
    if arch in ("nlsn", "edsr-nlsa"):
        if n_feats % NLSA_REDUCTION:
            raise ValueError(f"n_feats must be divisible by {NLSA_REDUCTION} (NLSA's reduction), got {n_feats}")
        check_backend(backend)
        return NLSN(scale, n_feats=n_feats, n_resblocks=n_resblocks, n_hashes=n_hashes, chunk_size=chunk_size,
                    res_scale=res_scale, rgb_range=rgb_range, backend=backend)
    attention = {"edsr": "none", "edsr-nla": "nla", "edsr-cc": "cc"}[arch]
    return AttentionEDSR(scale, attention, n_feats=n_feats, n_resblocks=n_resblocks, res_scale=res_scale,
                         rgb_range=rgb_range)


def model_config(model: nn.Module, arch: str) -> dict:
    """The ``build_model`` keyword arguments (and ``arch``) that rebuild ``model``'s shape."""
    config = dict(arch=arch, scale=model.scale, n_feats=model.n_feats, n_resblocks=model.n_resblocks,
                  res_scale=float(model.res_scale), rgb_range=model.rgb_range)
    if isinstance(model, NLSN):
        config.update(n_hashes=model.n_hashes, chunk_size=model.chunk_size)
    return config


def load_model(path, *, backend: str = "auto", n_hashes: int | None = None, chunk_size: int | None = None) -> nn.Module:
    """A network from a checkpoint file: one the trainer wrote (its ``config`` rebuilds any
    --arch; n_hashes / chunk_size override the stored ones), or any NLSN checkpoint
    ``NLSN.from_file`` reads (the authors' included; the paper's n_hashes 4, chunk_size 144
    unless given). On the CPU."""
    from . import checkpoint

    obj = checkpoint.read_checkpoint(path)
    config = obj.get("config") if isinstance(obj, dict) else None
    if not isinstance(config, dict):
        return NLSN.from_file(path, backend=backend, n_hashes=n_hashes or 4, chunk_size=chunk_size or 144)
    config = dict(config)
    arch = config.pop("arch", None)
    if arch not in ARCHS:
        raise ValueError(f"{path}: its config names no known arch ({arch!r}; expected one of {', '.join(ARCHS)})")
    if n_hashes is not None:
        config["n_hashes"] = n_hashes
    if chunk_size is not None:
        config["chunk_size"] = chunk_size
    model = build_model(arch, backend=backend, **config)
    try:
        model.load_state_dict(checkpoint.unwrap_state_dict(obj), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: the state_dict does not fit its config {config}: {e}") from e
    return model
