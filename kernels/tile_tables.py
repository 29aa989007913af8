"""Tile tables of the attention kernels, one per card family, and the card a launch runs on.

The tiles are chosen from the device's compute capability: the limit that decides them is
the shared memory one block may use, and the register file sets what spills.

The launchers ask ``card_of(device)`` for the family of the tensor's device; CPU tensors
(the kernels in Triton's interpreter, where tiles need only be valid) get ``DEFAULT_CARD``.
``as_card(cap)`` makes every launch inside it choose tiles as if on sm_<cap>: the compile
test records the launches of each card that way, with no GPU.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import triton

from .chunk_tiles import TileConfig, padded_channels, padded_width, row_tile, step_rows

# A tile table per family; the family of any capability is chosen by ``family``.
SM90 = 90
# Shared memory one block may use (bytes, the opt-in maximum; CUDA programming guide,
# "Technical Specifications per Compute Capability").
SHARED_MEMORY_PER_BLOCK = {75: 65_536, 80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448}
DEFAULT_CARD = SM90

_override: list[int] = []


def family(capability: tuple[int, int]) -> int:
    """The tile table of a (major, minor) compute capability."""
    return SM90


@functools.cache
def _device_family(index: int) -> int:
    return family(torch.cuda.get_device_capability(index))


def card_of(device: torch.device) -> int:
    """The tile table launches on ``device`` use (the innermost ``as_card`` if any)."""
    if _override:
        return _override[-1]
    if device.type == "cuda":
        return _device_family(device.index if device.index is not None else torch.cuda.current_device())
    return DEFAULT_CARD


@contextlib.contextmanager
def as_card(card: int) -> Iterator[None]:
    """Within the block, launches choose their tiles as on sm_<card>."""
    _override.append(card)
    try:
        yield
    finally:
        _override.pop()


def tf32_enabled() -> bool:
    """Whether torch lets fp32 matmuls on CUDA use TF32.

    ``torch.backends.cuda.matmul.fp32_precision`` (torch >= 2.9: "tf32" or "ieee"; it also
    reflects the legacy ``allow_tf32``, ``torch.set_float32_matmul_precision`` and the
    generic ``torch.backends.fp32_precision``) where it exists, else the legacy flag.
    Reading ``allow_tf32`` raises once the new API has been used, so it is read only
    where the new one is missing.
    """
    matmul = torch.backends.cuda.matmul
    try:
        return matmul.fp32_precision == "tf32"
    except (AttributeError, RuntimeError):
        pass
    try:
        return bool(matmul.allow_tf32)
    except RuntimeError:
        return False


def dot_precision(dtype: torch.dtype, card: int) -> str:
    """tl.dot's input_precision: fp32 products follow torch's fp32 matmul precision, as
    torch matmuls do; TF32 needs sm_80 or later (torch computes full fp32 before)."""
    if dtype == torch.float32 and card >= 80 and tf32_enabled():
        return "tf32"
    return "ieee"


def forward_tiles(chunk: int, d: int, c: int, dtype: torch.dtype, card: int) -> TileConfig:
    """Tiles of the forward for one problem.

    64 query rows per tile. Half precision: all of c up to 256 in one channel tile (no
    scores recomputed), 64-row steps on the tensor cores (32 for a 256-channel tile),
    one warpgroup while the accumulator is narrow, else two. fp32 products run on the FMA units, which hold their
    operands replicated in registers: channel tiles of at most 128, 8 warps, and 32-row
    steps for the widest accumulator, so that nothing spills.
    """
    block_n = step_rows(chunk)
    if dtype == torch.float32:
        block_c = min(128, max(16, triton.next_power_of_2(c)))
        num_warps = 8
        block_n = min(block_n, 32) if block_c >= 128 else block_n
    else:
        block_c = min(256, max(16, triton.next_power_of_2(c)))
        num_warps = 4 if block_c <= 64 else 8
        block_n = min(block_n, 32) if block_c > 128 else block_n
    return TileConfig(block_m=row_tile(chunk), block_n=block_n, block_d=padded_width(d), block_c=block_c,
                      padded_c=padded_channels(c, block_c), num_warps=num_warps)


def backward_tiles(chunk: int, d: int, c: int, dtype: torch.dtype, card: int) -> tuple[TileConfig, TileConfig]:
    """Tiles of the dq and the dk/dv kernels for one problem: 64-row tiles; all of c in one
    tile, since dS needs the whole of dO . y.

    Half precision: 64-row steps on the tensor cores, 4 warps (one warpgroup) while the
    rows are narrow, else 8. fp32 products run on the FMA units, which hold their operands
    replicated in registers: the dk/dv kernel (four products per step) takes 16-row steps
    and 8 warps (and no software pipelining where the tile is 64 rows, which spills under
    triton 3.6) so that nothing spills, and wider problems take narrower tiles.
    """
    padded_c = padded_width(c)
    block_d = padded_width(d)
    block_m, block_n = row_tile(chunk), step_rows(chunk)
    narrow = padded_c <= 64 and block_d <= 64
    if dtype != torch.float32:
        dq_warps = 4 if narrow else 8
        dq = TileConfig(block_m, block_n, block_d, padded_c, padded_c, num_warps=dq_warps)
        dkdv = TileConfig(block_m, block_n if narrow else min(block_n, 32), block_d, padded_c, padded_c,
                          num_warps=4 if narrow else 8)
        return dq, dkdv
    dq = TileConfig(block_m, block_n if narrow else min(block_n, 16), block_d, padded_c, padded_c, num_warps=8)
    dkdv = TileConfig(block_m if narrow else min(block_m, 32), 16, block_d, padded_c, padded_c, num_warps=8,
                      num_stages=1 if narrow else 2)
    return dq, dkdv
