"""Argument checks shared by every public entry point.

Each check raises before any kernel runs, with a message that names the argument and
what was expected: a bad index read through in a kernel touches memory that is not ours,
and a crash deep inside Triton tells the user nothing. Wrong types and dtypes raise
TypeError, wrong values, shapes and devices raise ValueError.

Each argument is validated once, at the public surface: ``functional`` (and the modules
through it), and the public functions of ``reference`` and ``streaming``, which are thin
wrappers over their ``*_unchecked`` internals. Internal calls pass validated arguments.

The perm check. A kernel reads rows of x and y through perm, so perm's values are checked
before one runs. What is checked is a *perm check*, one of ``PERM_CHECKS``:

- ``"full"``: every row is a permutation of range(L) (which includes the range);
- ``"range"``: every index lies in [0, L) (the memory-safety part);
- ``"none"``: nothing is read; for perms made by ``bucket_sort`` (an argsort: a
  permutation by construction), as inside ``nlsa``.

The public keyword ``check_perm=True`` (default) asks for ``"full"``, ``check_perm=False``
for ``"range"`` (``perm_check_of``). ``check_perm_tensor`` checks perm's shape, dtype and
device; ``check_perm_values`` runs a perm check.

Everything here but ``check_perm_values`` looks only at Python values, shapes, dtypes and
devices, so it costs no device work and traces cleanly under torch.compile.
``check_perm_values`` reads perm's values (one host synchronisation).
"""
from __future__ import annotations

import numbers

import torch

from ._autocast import autocast_dtype

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)
PERM_CHECKS = ("full", "range", "none")


def check_positive_int(value, name: str) -> int:
    if isinstance(value, torch.SymInt):  # a traced size under torch.compile(dynamic=True)
        torch._check(value >= 1, lambda: f"{name} must be >= 1")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


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


def check_match_embedding(x) -> None:
    """x: (N, L, d) float with d >= 1 (a hash and a key need at least one feature)."""
    check_float_tensor(x, "x", 3, "(N, L, d)")
    if x.shape[2] == 0:
        raise ValueError(f"x must have at least one feature (d >= 1) in (N, L, d), got shape {tuple(x.shape)}")


def check_embeddings(x, y) -> None:
    """x: (N, L, d) match embedding, y: (N, L, c) assembly embedding."""
    check_match_embedding(x)
    check_float_tensor(y, "y", 3, "(N, L, c)")
    if x.shape[:2] != y.shape[:2]:
        raise ValueError(
            f"x (N, L, d) and y (N, L, c) must agree in batch and length, got x {tuple(x.shape)} "
            f"and y {tuple(y.shape)}"
        )
    if x.dtype != y.dtype:
        raise TypeError(f"x and y must have one dtype, got x {x.dtype} and y {y.dtype}")
    check_same_device(x=x, y=y)


def check_perm_tensor(perm, n: int, length: int, device: torch.device) -> None:
    """perm: (N, R, L) integer indices on x's device (shape, dtype and device only)."""
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


def perm_check_of(check_perm) -> str:
    """The perm check the public ``check_perm`` keyword asks for: True "full", False "range"."""
    return "full" if check_bool(check_perm, "check_perm") else "range"


def check_perm_values(perm: torch.Tensor, length: int, perm_check: str = "full") -> None:
    """Runs ``perm_check`` on perm (N, R, L): every entry in [0, L), and with "full" every
    row a permutation.

    "range" is the memory-safety check (a kernel reads rows of x and y through perm);
    "full" also rejects repeated indices (the result would be undefined: a repeated pixel
    is written twice, a missing one never). Both cost one pass over perm and one host
    synchronisation; "full" adds an (N, R, L) boolean scatter. "none" checks nothing and
    is for perms made by ``bucket_sort`` (an argsort: a permutation by construction).
    """
    if perm_check not in PERM_CHECKS:
        raise ValueError(f"perm_check must be one of {PERM_CHECKS}, got {perm_check!r}")
    if perm_check == "none" or perm.numel() == 0:
        return
    low, high = torch.aminmax(perm)
    ok = (low >= 0) & (high < length)
    if perm_check == "full":
        rows = perm.reshape(-1, length).long().clamp(0, length - 1)
        # L indices per row hit all L slots exactly when the row is a permutation.
        hit = torch.zeros(rows.shape, dtype=torch.bool, device=perm.device).scatter_(1, rows, True)
        ok = ok & hit.all()
    if bool(ok):  # the one host synchronisation
        return
    low, high = int(low), int(high)
    if low < 0 or high >= length:
        raise ValueError(
            f"perm must hold indices in [0, L) = [0, {length}), got values in [{low}, {high}]"
        )
    row = int((~hit.all(dim=1)).nonzero()[0, 0])
    n, r = divmod(row, perm.shape[1])
    counts = torch.bincount(perm[n, r].long(), minlength=length)
    repeated = int((counts > 1).nonzero()[0, 0])
    missing = int((counts == 0).nonzero()[0, 0])
    raise ValueError(
        f"perm[{n}, {r}] must be a permutation of range(L) = range({length}) (each index exactly "
        f"once), but it repeats {repeated} and lacks {missing}; pass check_perm=False to skip this "
        "check (indices are still checked to be in [0, L); the output is then undefined)"
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


def check_generator(generator, device=None, device_name: str = "x") -> None:
    """generator: None or a torch.Generator, on ``device`` (named ``device_name``) when given."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if device is None:
        return
    gen_device, device = torch.device(generator.device), torch.device(device)
    if gen_device.type != device.type or (
        gen_device.index is not None and device.index is not None and gen_device.index != device.index
    ):
        raise ValueError(f"generator is on {generator.device} but {device_name} is on {device}")


def check_chunked_attention_args(x, y, perm, chunk_size, check_perm) -> tuple[int, str]:
    """The arguments of every ``chunked_attention``, shapes and types only: returns
    (chunk_size, the perm check ``check_perm`` asks for). perm's values are read later
    (``check_perm_values``), by the caller, where its backend needs them."""
    check_embeddings(x, y)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    check_perm_tensor(perm, x.shape[0], x.shape[1], x.device)
    return chunk_size, perm_check_of(check_perm)


# ---------------------------------------------------------------------------------------
# The modules' arguments (NonLocalSparseAttention, the baselines)


def check_feature_map(input, channels: int, module) -> None:
    """input: (N, C, H, W) float with C = channels, on the parameters' device, in their dtype
    (or any float dtype under autocast)."""
    check_float_tensor(input, "input", 4, "(N, C, H, W)")
    if input.shape[1] != channels:
        raise ValueError(
            f"input must have {channels} channels (N, C, H, W), got shape {tuple(input.shape)}"
        )
    weight = next(module.parameters())
    check_same_device(input=input, parameters=weight)
    if input.dtype != weight.dtype and autocast_dtype(input.device.type) is None:
        raise TypeError(
            f"input must have the parameters' dtype {weight.dtype} (or run under torch.autocast), "
            f"got {input.dtype}; convert one with .to()"
        )


def check_res_scale(res_scale) -> float:
    if isinstance(res_scale, bool) or not isinstance(res_scale, numbers.Real):
        raise TypeError(f"res_scale must be a real number, got {type(res_scale).__name__} {res_scale!r}")
    return res_scale


def check_channels(channels: int, reduction: int, name: str = "channels") -> None:
    check_positive_int(channels, name)
    check_positive_int(reduction, "reduction")
    if channels % reduction:
        raise ValueError(f"{name} ({channels}) must be divisible by reduction ({reduction})")
