"""The ring layout the attention kernels read, and their tile geometry.

Each round is staged once (``stage_round``) into contiguous buffers in *ring order*: the
padded sorted sequence of L + P positions (docs/semantics.md §4.1), with a copy of its
last chunk before it and of its first chunk after it, so E = K + (L + P) + K rows:

    ring row e holds padded position (e - K) mod (L + P)
    query at sorted position q (q < L) is ring row K + q
    its 3K candidates are ring rows [j K, j K + 3K), j = q // K

so chunk j - 1, j and j + 1, wrap-around included, are one contiguous range of rows, and
the multiset rule for one or two chunks holds by construction (with one chunk the range is
three copies of it; with two it is chunk 1, 0, 1 or 0, 1, 0). Tiles are plain row blocks:
a query tile may straddle two chunks, so its key range is the union of their ranges,
[j0 K, (j1 + 3) K), and only the blocks at the ends of that range need a per-pair mask.

Staged rows are padded to widths that are powers of two (x) or multiples of the channel
tile (y), zero-filled, so the hot loops load whole rows without column masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

# Extra memory of a group of rounds (staged rows and per-round sums): at most the larger of
# GROUP_OUTPUTS fp32 outputs and GROUP_BYTES_MIN, with one round per group at the least.
GROUP_OUTPUTS = 2
GROUP_BYTES_MIN = 256 * 2**20

# Module-level constants inside @triton.jit must be constexpr.
LOG2E = tl.constexpr(1.4426950408889634)
KEY_NORM_EPS = tl.constexpr(5e-5)


@dataclass(frozen=True)
class RingLayout:
    """Row counts of one round's ring buffers for L = ``length`` (docs/semantics.md §4.1)."""

    length: int
    chunk: int
    padding: int
    n_chunks: int

    @property
    def rows(self) -> int:
        return self.length + self.padding + 2 * self.chunk


@dataclass(frozen=True)
class TileConfig:
    """One kernel's tiles: rows of the tile a program owns (``block_m``), rows per step of
    its loop (``block_n``), padded widths of x (``block_d``) and of y (``padded_c``), the
    channel tile (``block_c``) and the launch options."""

    block_m: int
    block_n: int
    block_d: int
    block_c: int
    padded_c: int
    num_warps: int
    num_stages: int = 2

    @property
    def channel_tiles(self) -> int:
        return self.padded_c // self.block_c

    def options(self) -> dict:
        return dict(num_warps=self.num_warps, num_stages=self.num_stages)


def round_group(rounds: int, bytes_per_round: int, output_bytes: int) -> int:
    """Rounds per group (one launch each of staging and attention): as many as the budget
    max(GROUP_OUTPUTS x ``output_bytes``, GROUP_BYTES_MIN) holds, at least one."""
    budget = max(GROUP_OUTPUTS * output_bytes, GROUP_BYTES_MIN)
    return max(1, min(rounds, budget // max(bytes_per_round, 1)))


def padded_width(d: int) -> int:
    """x rows are padded to a power of two of at least 16 (the smallest tl.dot extent)."""
    return max(16, triton.next_power_of_2(d))


def padded_channels(c: int, block_c: int) -> int:
    return triton.cdiv(c, block_c) * block_c


def row_tile(chunk: int) -> int:
    """Query (or key) tile rows: 64 rows fill one Hopper warpgroup's wgmma (M = 64); a
    smaller chunk gets a smaller tile so that a tile spans at most two chunks."""
    return max(16, min(64, triton.next_power_of_2(chunk + 1) // 2))


def step_rows(chunk: int) -> int:
    """Rows per loop step over a 3K-row candidate range (at least 16 for tl.dot)."""
    return max(16, min(64, triton.next_power_of_2(3 * chunk)))


@triton.jit
def unmasked_steps(first_chunk, last_chunk, CHUNK, BLOCK_N: tl.constexpr):
    """Loop steps of BLOCK_N rows over the key range [first_chunk K, (last_chunk + 3) K) of a
    query tile whose queries lie in chunks first_chunk..last_chunk: steps [0, lo) and
    [hi, total) hold pairs outside some query's neighbourhood and need a mask, steps
    [lo, hi) are inside every query's neighbourhood. Returns (lo, hi, total)."""
    total = tl.cdiv((last_chunk - first_chunk + 3) * CHUNK, BLOCK_N)
    lo = tl.cdiv((last_chunk - first_chunk) * CHUNK, BLOCK_N)
    hi = tl.maximum(lo, (3 * CHUNK) // BLOCK_N)
    return lo, hi, total


@triton.jit
def load_key_step(XS_n, YS_n, INV_n, rows, key_end, offs_d, offs_c, BLOCK_D: tl.constexpr,
                  PADDED_C: tl.constexpr, MASKED: tl.constexpr):
    """Ring rows ``rows`` of x (keys), their key scales and their rows of y (values); a
    masked step reads zeros past ``key_end``."""
    rows = rows.to(tl.int64)  # rows x PADDED_C passes 2^31 at 2048^2 and c > 256
    if MASKED:
        in_range = rows < key_end
        k = tl.load(XS_n + rows[:, None] * BLOCK_D + offs_d[None, :], mask=in_range[:, None], other=0.0)
        inv_norm = tl.load(INV_n + rows, mask=in_range, other=0.0)
        v = tl.load(YS_n + rows[:, None] * PADDED_C + offs_c[None, :], mask=in_range[:, None], other=0.0)
    else:
        k = tl.load(XS_n + rows[:, None] * BLOCK_D + offs_d[None, :])
        inv_norm = tl.load(INV_n + rows)
        v = tl.load(YS_n + rows[:, None] * PADDED_C + offs_c[None, :])
    return k, inv_norm, v
