"""Reading NLSN checkpoints as users have them, and reading the configuration off their shapes.

A checkpoint is a file (``.pt``/``.pth`` read by ``torch.load(weights_only=True)``,
``.safetensors`` by safetensors) holding NLSN's state_dict, either bare (the authors'
files), or wrapped under one of ``WRAPPER_KEYS`` (BasicSR saves ``params`` and
``params_ema``, EDSR-style trainers ``state_dict`` or ``model``), and with or without the
``module.`` prefix that ``nn.DataParallel`` leaves on every key.

What is not in a checkpoint: n_hashes, chunk_size and res_scale (the caller passes them;
the paper's 4, 144 and 0.1 by default).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from .edsr import RGB_MEAN

__all__ = [
    "WRAPPER_KEYS", "read_checkpoint", "unwrap_state_dict", "infer_config", "is_nlsn_state_dict",
    "check_state_dict",
]

#: Keys a trainer wraps the state_dict under, in the order they are looked for: BasicSR's
#: EMA weights first, since they are the ones it evaluates and releases.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "model_state_dict")
DATA_PARALLEL_PREFIX = "module."


#: What a file that is not a checkpoint most often is, by its first bytes.
_SIGNATURES = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
    (b"\x1f\x8b", "a gzip archive"), (b"<", "an HTML or XML file"),
)


def _file_kind(path: str) -> str:
    """'zip' (torch.save's format), 'pickle' (its legacy format), 'safetensors', or what
    else the file is, in words, judged by its first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x80"):  # a pickle's PROTO opcode, which torch.save's legacy format opens with
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= os.path.getsize(path) - 8:
        return "safetensors"  # an 8-byte header length, then the JSON header
    if not head:
        return "an empty file"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "a WebP image"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    chars = head.decode("utf-8", "replace").rstrip("\ufffd")  # the 16 bytes may cut a character
    text = all(c.isprintable() or c in "\t\r\n" for c in chars)
    return "a text file" if text else "a file of another kind"


def read_checkpoint(path: str | os.PathLike) -> Mapping:
    """The object stored in a checkpoint file, on the CPU.

    The format is told by the file's first bytes, not its name: a safetensors file is read
    with safetensors (the ``cli`` extra installs it), a PyTorch one (zip, or the legacy
    pickle) with ``torch.load(weights_only=True)``, which refuses pickled code. Raises
    FileNotFoundError for a missing file, ValueError for one that is not a checkpoint
    (saying what it is instead: an image, a text file, ...).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    kind = _file_kind(path)
    if kind not in ("zip", "pickle", "safetensors"):
        raise ValueError(
            f"{path} is not a checkpoint: it is {kind} (a PyTorch checkpoint is the zip archive or "
            "pickle torch.save writes; a .safetensors file opens with its header's length and JSON)"
        )
    if kind == "safetensors":
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError(
                f"reading {path} needs safetensors: pip install 'nlsa-triton[cli]' (or: pip install safetensors)"
            ) from e
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as e:
            raise ValueError(f"cannot read {path} as a safetensors file: {e}") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises several types for a damaged or foreign file
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(
            f"cannot load {path} as a PyTorch checkpoint (torch.load with weights_only=True): "
            f"{type(e).__name__}: {first_line}"
        ) from e


def unwrap_state_dict(obj) -> Mapping[str, torch.Tensor]:
    """The bare state_dict in ``obj``: obj itself or its first ``WRAPPER_KEYS`` entry,
    without DataParallel's ``module.`` prefix (an ``nn.Module`` gives its own state_dict)."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ValueError(f"not an NLSN state_dict: expected a mapping of tensors, got {type(obj).__name__}")
    if not any(k in obj for k in ("head.0.weight", DATA_PARALLEL_PREFIX + "head.0.weight")):
        obj = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), obj)
    if obj and all(isinstance(k, str) and k.startswith(DATA_PARALLEL_PREFIX) for k in obj):
        return {k[len(DATA_PARALLEL_PREFIX):]: t for k, t in obj.items()}
    return obj


def is_edsr_layout(state_dict: Mapping) -> bool:
    """Whether a bare state_dict has the EDSR layout NLSN is built on: head, residual
    blocks (``body.<i>.body.0.weight``), upsampler tail and mean shifts."""
    edsr = ("head.0.weight", "tail.0.0.weight", "tail.1.weight", "sub_mean.bias", "add_mean.bias")
    return all(k in state_dict for k in edsr) and any(_is_resblock_key(k) for k in state_dict)


def is_nlsn_state_dict(state_dict: Mapping) -> bool:
    """Whether a bare state_dict has NLSN's own layout: an NLSA block (``conv_match`` and
    ``conv_assembly``) opening the body, and EDSR's head, tail and mean shift around it.

    EDSR's keys alone (head, residual blocks, tail) are not enough: EDSR and its many
    descendants have them too.
    """
    attention = ("body.0.conv_match.0.weight", "body.0.conv_assembly.0.weight")
    return all(k in state_dict for k in attention) and is_edsr_layout(state_dict)


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """scale, n_feats, n_resblocks, n_colors and rgb_range from a bare NLSN state_dict's shapes.

    Raises ``ValueError``, naming what is wrong, for a state_dict that is not NLSN's.
    """
    head = state_dict.get("head.0.weight")
    if not isinstance(head, torch.Tensor) or head.dim() != 4:
        raise ValueError(
            "not an NLSN state_dict: no 4-d 'head.0.weight' tensor "
            f"(first keys: {list(state_dict)[:5]})"
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
    # MeanShift's bias is -rgb_range * mean: the one place a checkpoint records its pixel range.
    ranges = -bias.double().cpu() / torch.tensor(RGB_MEAN, dtype=torch.float64)
    rgb_range = float(ranges.mean())
    if not rgb_range > 0 or float((ranges - rgb_range).abs().max()) > 1e-3 * rgb_range:
        raise ValueError(
            f"'sub_mean.bias' {bias.tolist()} is not -rgb_range * DIV2K mean {RGB_MEAN}: "
            "not an NLSN/EDSR mean shift"
        )
    if abs(rgb_range - round(rgb_range)) < 1e-3 * rgb_range:
        rgb_range = int(round(rgb_range))  # a half-precision checkpoint still gives exactly 1 or 255
    return dict(scale=scale, n_feats=n_feats, n_resblocks=n_resblocks, n_colors=n_colors, rgb_range=rgb_range)


def check_state_dict(expected: Mapping[str, torch.Tensor], state_dict: Mapping, config: dict) -> None:
    """Raise ``ValueError`` naming the missing, unexpected and wrongly shaped keys of
    ``state_dict`` against ``expected`` (the state_dict of the model built from ``config``)."""
    described = ", ".join(f"{k}={val}" for k, val in config.items())
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"not an NLSN state_dict of the inferred configuration ({described}): "
            f"missing keys {_few(missing)}, unexpected keys {_few(unexpected)}"
        )
    wrong = [
        f"{k}: {tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__} "
        f"(expected {tuple(expected[k].shape)})"
        for k, t in state_dict.items()
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise ValueError(f"NLSN state_dict ({described}) has tensors of the wrong shape: {_few(wrong)}")


def _is_resblock_key(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 5 and parts[0] == "body" and parts[2:] == ["body", "0", "weight"]


def _few(items: list, n: int = 5) -> str:
    """The first ``n`` items, comma-separated, and how many more there are."""
    if not items:
        return "none"
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more
