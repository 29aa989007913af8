"""NLSN, the Non-Local Sparse Network (Mei, Fan, Zhou, CVPR 2021), with its checkpoint layout.

The network is EDSR with Non-Local Sparse Attention blocks in its body:

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

Randomness: NLSN draws fresh LSH rotations in every NLSA call. ``forward`` takes a
``torch.Generator`` (used by the NLSA blocks in body order) or explicit per-block
rotations, so a forward pass can be repeated exactly, on either backend.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .. import _validation as v
from .._backend import check_backend
from ..buckets import chunk_layout, num_buckets
from ..modules import NonLocalSparseAttention

__all__ = ["NLSN", "MeanShift", "ResBlock", "Upsampler", "RGB_MEAN", "NLSA_EVERY"]

#: DIV2K's RGB mean (fraction of rgb_range); EDSR's and NLSN's MeanShift, std 1.
RGB_MEAN = (0.4488, 0.4371, 0.4040)
RGB_STD = (1.0, 1.0, 1.0)
#: An NLSA block follows every NLSA_EVERY-th residual block (NLSN's ``(i + 1) % 8 == 0``).
NLSA_EVERY = 8
#: NLSA's match-embedding channel reduction in NLSN.
NLSA_REDUCTION = 4
KERNEL_SIZE = 3


def _conv(c_in: int, c_out: int, kernel_size: int = KERNEL_SIZE) -> nn.Conv2d:
    """EDSR's default_conv: 'same' padding, with bias."""
    return nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=True)


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
        self.body = nn.Sequential(_conv(n_feats, n_feats), nn.ReLU(inplace=True), _conv(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mul(self.res_scale) + x


def _check_scale(scale) -> int:
    scale = v.check_positive_int(scale, "scale")
    if scale != 3 and (scale < 2 or scale & (scale - 1)):
        raise ValueError(f"scale must be 3 or a power of two >= 2 (2, 4, 8, ...), got {scale}")
    return scale


class Upsampler(nn.Sequential):
    """EDSR's upsampler without activation: per factor 2, conv(n, 4n) + PixelShuffle(2);
    for scale 3, conv(n, 9n) + PixelShuffle(3). Convs at indices 0, 2, 4, ..."""

    def __init__(self, scale: int, n_feats: int):
        scale = _check_scale(scale)
        layers: list[nn.Module] = []
        if scale == 3:
            layers += [_conv(n_feats, 9 * n_feats), nn.PixelShuffle(3)]
        else:
            for _ in range(int(math.log2(scale))):
                layers += [_conv(n_feats, 4 * n_feats), nn.PixelShuffle(2)]
        super().__init__(*layers)


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
        backend: NLSA backend, "auto", "triton" or "torch" (see ``set_backend``).

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
        scale = _check_scale(scale)
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
        body.append(_conv(n_feats, n_feats))
        # Registration order as in NLSN (sub_mean, add_mean, head, body, tail), so that
        # state_dict() and parameters() list in the authors' order.
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(_conv(n_colors, n_feats))
        self.body = nn.Sequential(*body)
        self.tail = nn.Sequential(Upsampler(scale, n_feats), _conv(n_feats, n_colors))

    @property
    def attention_blocks(self) -> list[NonLocalSparseAttention]:
        """The NLSA blocks in body order (the order ``forward`` draws rotations in)."""
        return [m for m in self.body if isinstance(m, NonLocalSparseAttention)]

    @property
    def backend(self) -> str:
        backends = {m.backend for m in self.attention_blocks}
        return backends.pop() if len(backends) == 1 else "mixed"

    def set_backend(self, backend: str) -> "NLSN":
        """Switch every NLSA block to ``backend`` ("auto", "triton" or "torch"); returns self."""
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
        return self.add_mean(self.tail(res + x))

    def flops(self, height: int, width: int, batch: int = 1) -> dict[str, int]:
        """Analytic FLOP count of one forward on a (batch, 3, height, width) input.

        2 FLOPs per multiply-accumulate (torch.utils.flop_counter's convention); biases,
        activations, PixelShuffle, softmax exponentials and normalisations are not counted.
        Returns ``conv`` (every convolution, the MeanShifts and NLSA's embedding convs
        included), ``attention`` (NLSA's hash projections x @ rotations, 2 * L * d * B/2
        per round, and its chunked attention, 2 * (L + P) * 3K * (d + c) per round: each of
        the L + P sorted rows, the P padding rows included since NLSN computes them too,
        scores 3K candidates, duplicates counted, K = min(chunk_size, L)) and ``total``.
        The same number for both backends: it counts the algorithm.
        """
        h, w = v.check_positive_int(height, "height"), v.check_positive_int(width, "width")
        batch = v.check_positive_int(batch, "batch")

        def conv_flops(conv: nn.Conv2d, pixels: int) -> int:
            kh, kw = conv.kernel_size
            return 2 * batch * pixels * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw

        length = h * w
        conv = conv_flops(self.sub_mean, length) + conv_flops(self.head[0], length)
        attention = 0
        for m in self.body:
            if isinstance(m, NonLocalSparseAttention):
                conv += conv_flops(m.conv_match[0], length) + conv_flops(m.conv_assembly[0], length)
                d, c = m.conv_match[0].out_channels, m.conv_assembly[0].out_channels
                layout = chunk_layout(length, m.chunk_size)
                sorted_rows, keys = layout.n_chunks * layout.chunk, 3 * layout.chunk
                half = num_buckets(length, m.chunk_size) // 2
                attention += 2 * batch * m.n_hashes * (length * d * half + sorted_rows * keys * (d + c))
            elif isinstance(m, ResBlock):
                conv += conv_flops(m.body[0], length) + conv_flops(m.body[2], length)
            else:
                conv += conv_flops(m, length)
        pixels = length
        for m in self.tail[0]:
            if isinstance(m, nn.Conv2d):
                conv += conv_flops(m, pixels)
            else:
                pixels *= m.upscale_factor ** 2
        conv += conv_flops(self.tail[1], pixels) + conv_flops(self.add_mean, pixels)
        return {"conv": conv, "attention": attention, "total": conv + attention}

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
        return _infer_config(_checkpoint_state_dict(state_dict))

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

        Accepts the authors' checkpoints (a plain state_dict), also wrapped as
        ``{"state_dict": ...}`` / ``{"model": ...}`` or with a ``module.`` prefix
        (DataParallel). n_hashes, chunk_size and res_scale are not in a checkpoint: the
        defaults are the paper's. Raises ``ValueError`` when it is not an NLSN state_dict.
        """
        state_dict = _checkpoint_state_dict(state_dict)
        config = _infer_config(state_dict)
        model = cls(
            config["scale"], n_feats=config["n_feats"], n_resblocks=config["n_resblocks"],
            n_hashes=n_hashes, chunk_size=chunk_size, res_scale=res_scale,
            rgb_range=config["rgb_range"], n_colors=config["n_colors"], backend=backend,
        )
        expected = model.state_dict()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if missing or unexpected:
            raise ValueError(
                "not an NLSN state_dict of the inferred configuration "
                f"({_describe(config)}): missing keys {_few(missing)}, unexpected keys {_few(unexpected)}"
            )
        wrong = [
            f"{k}: {tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__} "
            f"(expected {tuple(expected[k].shape)})"
            for k, t in state_dict.items()
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(expected[k].shape)
        ]
        if wrong:
            raise ValueError(
                f"NLSN state_dict ({_describe(config)}) has tensors of the wrong shape: {_few(wrong)}"
            )
        model.load_state_dict(state_dict, strict=True)
        return model


def _checkpoint_state_dict(obj) -> Mapping[str, torch.Tensor]:
    """The plain state_dict of a checkpoint: unwrapped, without DataParallel's ``module.`` prefix."""
    return _strip_prefix(unwrap_state_dict(obj))


def _infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """``NLSN.infer_config`` on a plain state_dict (see ``_checkpoint_state_dict``)."""
    head = state_dict.get("head.0.weight")
    if not isinstance(head, torch.Tensor) or head.dim() != 4:
        raise ValueError(
            "not an NLSN state_dict: no 4-d 'head.0.weight' tensor "
            f"(first keys: {_first_keys(state_dict)})"
        )
    n_feats, n_colors = int(head.shape[0]), int(head.shape[1])
    n_resblocks = sum(1 for k in state_dict if _is_resblock_key(k))
    if n_resblocks == 0:
        raise ValueError("not an NLSN state_dict: no residual blocks ('body.<i>.body.0.weight')")
    upsampler_convs = [
        k for k in state_dict if k.startswith("tail.0.") and k.endswith(".weight") and k.count(".") == 3
    ]
    malformed = [k for k in upsampler_convs if not k.split(".")[2].isdigit()]
    if malformed:
        raise ValueError(
            f"not an NLSN state_dict: upsampler keys must be 'tail.0.<index>.weight', got {_few(malformed)}"
        )
    first = state_dict.get("tail.0.0.weight")
    if not isinstance(first, torch.Tensor) or first.dim() != 4:
        raise ValueError("not an NLSN state_dict: no upsampler ('tail.0.0.weight')")
    if first.shape[0] == 9 * n_feats:
        scale = 3
    elif first.shape[0] == 4 * n_feats:
        scale = 2 ** len(upsampler_convs)
    else:
        raise ValueError(
            f"not an NLSN state_dict: 'tail.0.0.weight' has {first.shape[0]} output channels, "
            f"expected 4 * n_feats = {4 * n_feats} or 9 * n_feats = {9 * n_feats}"
        )
    bias = state_dict.get("sub_mean.bias")
    if not isinstance(bias, torch.Tensor) or bias.shape != (3,):
        raise ValueError("not an NLSN state_dict: no 3-element 'sub_mean.bias'")
    ranges = -bias.double().cpu() / torch.tensor(RGB_MEAN, dtype=torch.float64)
    rgb_range = float(ranges.mean())
    if not rgb_range > 0 or float((ranges - rgb_range).abs().max()) > 1e-3 * rgb_range:
        raise ValueError(
            f"'sub_mean.bias' {bias.tolist()} is not -rgb_range * DIV2K mean {RGB_MEAN}: "
            "not an NLSN/EDSR mean shift"
        )
    if abs(rgb_range - round(rgb_range)) < 1e-3 * rgb_range:
        rgb_range = int(round(rgb_range))
    return dict(scale=scale, n_feats=n_feats, n_resblocks=n_resblocks, n_colors=n_colors, rgb_range=rgb_range)


def unwrap_state_dict(obj) -> Mapping[str, torch.Tensor]:
    """The state_dict inside ``obj``: obj itself, or obj["state_dict"] / obj["model"]."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ValueError(f"not an NLSN state_dict: expected a mapping of tensors, got {type(obj).__name__}")
    if "head.0.weight" not in obj and "module.head.0.weight" not in obj:
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    return obj


def _strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    if state_dict and all(isinstance(k, str) and k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: t for k, t in state_dict.items()}
    return state_dict


def _is_resblock_key(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 5 and parts[0] == "body" and parts[2:] == ["body", "0", "weight"]


def _first_keys(state_dict: Mapping, n: int = 5) -> list:
    return list(state_dict)[:n]


def _few(items: list, n: int = 5) -> str:
    if not items:
        return "none"
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


def _describe(config: dict) -> str:
    return ", ".join(f"{k}={val}" for k, val in config.items())
