"""Tile geometry shared by the chunked-attention kernels.

Triton tiles are powers of two while NLSN's chunk is 144. Queries are tiled inside one
chunk; a query's 3K candidate keys are walked as one flat range [0, 3K) (chunk j, then
j - 1, then j + 1), so key tiles straddle chunk boundaries and only the end of that range
is masked (3 * 144 = 432 = 7 tiles of 64, 96% of lanes busy).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


# Module-level constants inside @triton.jit must be constexpr.
LOG2E = tl.constexpr(1.4426950408889634)
KEY_NORM_EPS = tl.constexpr(5e-5)


def fitting_block(extent: int, candidates: tuple[int, ...], min_efficiency: float = 0.85) -> int:
    """The largest block in ``candidates`` that covers ``extent`` with few masked lanes."""
    for block in sorted(candidates, reverse=True):
        if extent / (triton.cdiv(extent, block) * block) >= min_efficiency:
            return block
    return min(candidates)


@triton.jit
def candidate_pixels(
    perm_round,  # pointer to perm[n, r, :]
    t,  # candidate indices in [0, 3 * CHUNK), any shape
    chunk_index,  # the query chunk j (scalar)
    length,
    padding,
    n_chunks,
    CHUNK,
):
    """Pixel index (int64) of candidate t of the queries in chunk j, and its validity.

    Candidate t lies in chunk j + (0, -1, +1)[t // CHUNK] (wrapping around) at offset
    t % CHUNK; a padded position p >= L holds the pixel of sorted position p - P.
    """
    valid = t < 3 * CHUNK
    which = t // CHUNK
    shift = tl.where(which == 1, n_chunks - 1, tl.where(which == 2, 1, 0))
    position = ((chunk_index + shift) % n_chunks) * CHUNK + t % CHUNK
    position = tl.where(position >= length, position - padding, position)
    pixel = tl.load(perm_round + position, mask=valid, other=0).to(tl.int64)
    return pixel, valid


@triton.jit
def candidate_keys(x_n, stride_xl, perm_round, t, chunk_index, length, padding, n_chunks, CHUNK, offs_d, d_valid):
    """Rows of x for candidates t of chunk j's queries (0 where invalid), read in place,
    with their key scale 1 / max(||x||, eps), pixels and validity."""
    pixel, valid = candidate_pixels(perm_round, t, chunk_index, length, padding, n_chunks, CHUNK)
    k = tl.load(x_n + pixel[:, None] * stride_xl + offs_d[None, :], mask=valid[:, None] & d_valid[None, :], other=0.0)
    k_f32 = k.to(tl.float32)
    inv_norm = 1.0 / tl.maximum(tl.sqrt(tl.sum(k_f32 * k_f32, axis=1)), KEY_NORM_EPS)
    return k, inv_norm, pixel, valid


def dtype_variants(is_default: bool):
    """(dtype, dot precision) pairs to compile ahead of time: every one for the default
    problems, fp32 and fp16 for the others (bf16 and tf32 take the same code paths)."""
    if is_default:
        return ((torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float16, "ieee"),
                (torch.bfloat16, "ieee"))
    return ((torch.float32, "ieee"), (torch.float16, "ieee"))
