"""Tile tables of the attention kernels, one per card family, and the card a launch runs on.

The tiles are chosen from the device's compute capability: the limit that decides them is
the shared memory one block may use, and the register file sets what spills.

The launchers ask ``card_of(device)`` for the family of the tensor's device; CPU tensors
(the kernels in Triton's interpreter, where tiles need only be valid) get ``DEFAULT_CARD``.
``as_card(card)`` makes every launch inside it choose the tiles of that family: the compile
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
SM80, SM86, SM90 = 80, 86, 90
# Shared memory one block may use (bytes, the opt-in maximum; CUDA programming guide,
# "Technical Specifications per Compute Capability").
SHARED_MEMORY_PER_BLOCK = {75: 65_536, 80: 166_912, 86: 101_376, 90: 232_448}
DEFAULT_CARD = SM90

_override: list[int] = []


def family(capability: tuple[int, int]) -> int:
    """The tile table of a (major, minor) compute capability: sm_90 (H100, H200), sm_80
    (A100; the Jetson Orin's sm_87 has its 163 KB too), sm_86 for sm_86 and sm_89 (RTX
    30xx/40xx, A6000, L4, L40S: 99 KB) and for later cards (sm_100 and sm_120 are not
    compile-tested here: the table with the least shared memory). Older cards have none
    (docs/gpus.md: the backend resolution sends them to the torch backend)."""
    major, minor = capability
    if major < 8:
        raise ValueError(f"the Triton kernels have no tile table for sm_{major}{minor} (docs/gpus.md)")
    if major == 9:
        return SM90
    if (major, minor) in ((8, 0), (8, 7)):
        return SM80
    return SM86


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
    """Tiles of the forward for one problem (the same on every card: they fit 99 KB).

    64 query rows per tile. Half precision: all of c up to 256 in one channel tile (no
    scores recomputed), 64-row steps on the tensor cores (32 for a 256-channel tile), one
    warpgroup while the accumulator is narrow, else two. fp32 products run on the FMA
    units, which hold their operands replicated in registers: channel tiles of at most
    128, 8 warps, 32-row steps (64 only on sm_90 for d <= 32 and d + c <= 80, Table 2's
    d 16 / c 64), and for d over 64 32-row tiles, 16-row steps and 64-channel tiles, so that
    nothing spills.
    """
    block_m, block_n, block_d = row_tile(chunk), step_rows(chunk), padded_width(d)
    num_stages = 2
    if dtype == torch.float32:
        block_c = min(128, max(16, triton.next_power_of_2(c)))
        num_warps = 8
        if card != SM90 or block_d > 32 or block_d + block_c > 80:
            block_n = min(block_n, 32)
        if block_d > 64:
            block_m, block_n, block_c = min(block_m, 32), min(block_n, 16), min(block_c, 64)
    else:
        block_c = min(256, max(16, triton.next_power_of_2(c)))
        num_warps = 4 if block_c <= 64 else 8
        block_n = min(block_n, 32) if block_c > 128 else block_n
    return TileConfig(block_m=block_m, block_n=block_n, block_d=block_d, block_c=block_c,
                      padded_c=padded_channels(c, block_c), num_warps=num_warps, num_stages=num_stages)


def backward_tiles(chunk: int, d: int, c: int, dtype: torch.dtype, card: int) -> tuple[TileConfig, TileConfig]:
    """Tiles of the dq and the dk/dv kernels for one problem: all of c in one tile, since dS
    needs the whole of dO . y, so rows shrink as the row width w = padded d + padded c grows.

    The dq kernel holds its tile's dO and streams (k, y) steps through shared memory; the
    dk/dv kernel holds its tile's k, y and their two fp32 accumulators in registers and
    streams (x, dO) steps.

    Half precision, on the tensor cores: 64-row tiles and steps, 4 warps (one warpgroup)
    while the rows are narrow (d, c <= 64), else 8. Past w = 320 (NLSN's d 64 / c 256),
    32-row dq steps (sm_86 past w = 384: 32-row tiles and 16-row steps, within 99 KB);
    dk/dv tiles of 32 rows up to w = 384 and 16 beyond (sm_80 and sm_86 already past
    narrow rows: mma.sync holds both operands in registers, where sm_90's wgmma reads one
    from shared memory), with 32-row steps past narrow rows.

    fp32 (FMA units, or TF32 tensor cores): 8 warps; the FMA units hold their operands
    replicated in registers. dq: 64-row tiles, 16-row steps (64 only on sm_90 for
    d <= 32 and w <= 80, Table 2's d 16 / c 64), 32-row tiles past w = 320 or for d over
    64 (sm_86: already for 256 channels, and 16-row tiles without software pipelining
    for 512; without pipelining at d 128 on every card). dk/dv (four products per step):
    16-row steps, 64-row tiles without pipelining for narrow rows (pipelined, they spill under triton 3.6), 32-row
    tiles up to w = 320, then 16 (sm_86: without pipelining).
    """
    padded_c = padded_width(c)
    block_d = padded_width(d)
    width = block_d + padded_c
    block_m, block_n = row_tile(chunk), step_rows(chunk)
    narrow = padded_c <= 64 and block_d <= 64
    if dtype != torch.float32:
        warps = 4 if narrow else 8
        dq_m, dq_n = block_m, block_n
        if width > 320:
            dq_n = min(block_n, 32)
        if width > 384 and card == SM86:
            dq_m, dq_n = min(block_m, 32), min(block_n, 16)
        if width <= (320 if card == SM90 else 128):
            dkdv_m = block_m
        else:
            dkdv_m = min(block_m, 32 if width <= 384 else 16)
        dq = TileConfig(dq_m, dq_n, block_d, padded_c, padded_c, num_warps=warps)
        dkdv = TileConfig(dkdv_m, block_n if narrow else min(block_n, 32), block_d, padded_c, padded_c,
                          num_warps=warps)
        return dq, dkdv
    dq_m, dq_stages = block_m, 2
    if padded_c >= 512 and card == SM86:
        dq_m, dq_stages = min(block_m, 16), 1
    elif width > 320 or block_d >= 128 or (padded_c >= 256 and card == SM86):
        dq_m = min(block_m, 32)
        dq_stages = 1 if block_d >= 128 else dq_stages
    full_steps = card == SM90 and block_d <= 32 and width <= 80
    dq = TileConfig(dq_m, block_n if full_steps else min(block_n, 16), block_d, padded_c, padded_c, num_warps=8,
                    num_stages=dq_stages)
    if narrow:
        dkdv_m, dkdv_stages = block_m, 1
    elif width <= 320:
        dkdv_m, dkdv_stages = min(block_m, 32), 2
    else:
        dkdv_m, dkdv_stages = min(block_m, 16), 1 if card == SM86 else 2
    dkdv = TileConfig(dkdv_m, 16, block_d, padded_c, padded_c, num_warps=8, num_stages=dkdv_stages)
    return dq, dkdv


def backward_precisions(dtype: torch.dtype, card: int, d: int, c: int) -> tuple[str, str]:
    """The dq and the dk/dv kernels' input precisions: ``dot_precision``, except that the
    dk/dv kernel multiplies in full fp32 past w = 384: its TF32 operands pass through
    112 KB of shared memory at d 128 / c 512 (over sm_86's 99 KB) and spill on sm_80 and
    sm_90 even in 16-row tiles. TF32 is what torch allows, not what it requires."""
    precision = dot_precision(dtype, card)
    wide = padded_width(d) + padded_width(c) > 384
    return precision, "ieee" if wide else precision
