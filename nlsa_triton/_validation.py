"""Argument checks shared by every public entry point.

Each check raises before any kernel runs, with a message that names the argument and
what was expected: a bad index read through in a kernel touches memory that is not ours,
and a crash deep inside Triton tells the user nothing.
"""
from __future__ import annotations

import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_float_tensor(t, name: str, rank: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{name} must have shape {layout} (rank {rank}), got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), got {t.dtype}"
        )


def check_same_device(**named: torch.Tensor | torch.device) -> None:
    devices = {name: getattr(t, "device", t) for name, t in named.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"tensors must be on one device, got {listed}")


def check_embeddings(x, y) -> None:
    """x: (N, L, d) match embedding, y: (N, L, c) assembly embedding."""
    check_float_tensor(x, "x", 3, "(N, L, d)")
    check_float_tensor(y, "y", 3, "(N, L, c)")
    if x.shape[:2] != y.shape[:2]:
        raise ValueError(
            f"x (N, L, d) and y (N, L, c) must agree in batch and length, got x {tuple(x.shape)} "
            f"and y {tuple(y.shape)}"
        )
    if x.dtype != y.dtype:
        raise TypeError(f"x and y must have one dtype, got x {x.dtype} and y {y.dtype}")
    check_same_device(x=x, y=y)


def check_perm(perm, n: int, length: int, device: torch.device) -> None:
    """perm: (N, R, L) integer indices, every entry in [0, L)."""
    if not isinstance(perm, torch.Tensor):
        raise TypeError(f"perm must be a torch.Tensor of shape (N, n_hashes, L), got {type(perm).__name__}")
    if perm.dim() != 3 or perm.shape[0] != n or perm.shape[2] != length or perm.shape[1] < 1:
        raise ValueError(
            f"perm must have shape (N, n_hashes, L) = ({n}, R >= 1, {length}) to match x, "
            f"got {tuple(perm.shape)}"
        )
    if perm.dtype not in INDEX_DTYPES:
        raise TypeError(f"perm must be an int32 or int64 tensor, got {perm.dtype}")
    check_same_device(x=device, perm=perm)
    if perm.numel() and (int(perm.min()) < 0 or int(perm.max()) >= length):
        raise ValueError(
            f"perm must hold indices in [0, L) = [0, {length}), got values in "
            f"[{int(perm.min())}, {int(perm.max())}]"
        )


def check_rotations(rotations, d: int, device: torch.device) -> None:
    """rotations: (d, n_hashes, n_buckets // 2) float."""
    check_float_tensor(rotations, "rotations", 3, "(d, n_hashes, n_buckets // 2)")
    if rotations.shape[0] != d or rotations.shape[1] < 1 or rotations.shape[2] < 1:
        raise ValueError(
            f"rotations must have shape (d, n_hashes, n_buckets // 2) with d = {d} and both "
            f"other sizes >= 1, got {tuple(rotations.shape)}"
        )
    check_same_device(x=device, rotations=rotations)
