"""Stable counting sort of hash codes (at most 128 buckets) in one launch after the hash.

The hash kernel (``lsh_hash``) writes, besides the codes, the bucket counts of every block
of 64 positions. A program here owns SORT_BLOCKS consecutive such blocks of one round: it
sums the counts of every block of the round (the bucket totals, whose exclusive prefix
sum is where each bucket starts) and of the blocks before its own (how many of each
bucket precede its positions), then walks its blocks in order. A position's sorted slot
is where its bucket starts, plus the earlier positions of that bucket: those of earlier
blocks (the running counts) and those before it in its own block (a 64 x 64 comparison).
Equal codes keep their original order, so the result is torch's stable argsort.

Every program writes only the slots of its own positions, which no other position maps to.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

SORT_BLOCKS = 16  # hash blocks per program


@triton.jit
def _counting_sort_kernel(
    CODES, HIST, PERM,
    length, n_blocks,
    BLOCK_L: tl.constexpr,
    BUCKETS: tl.constexpr,
    SORT_BLOCKS: tl.constexpr,
):
    pid = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64) * tl.num_programs(2) + tl.program_id(2)  # n * R + r
    buckets = tl.arange(0, BUCKETS)
    first_block = pid * SORT_BLOCKS

    total = tl.zeros((BUCKETS,), dtype=tl.int32)
    before = tl.zeros((BUCKETS,), dtype=tl.int32)
    blocks = tl.arange(0, SORT_BLOCKS)
    for b0 in range(0, n_blocks, SORT_BLOCKS):
        block = b0 + blocks
        counts = tl.load(HIST + (row * n_blocks + block)[:, None] * BUCKETS + buckets[None, :],
                         mask=(block < n_blocks)[:, None], other=0)
        total += tl.sum(counts, axis=0)
        before += tl.sum(tl.where((block < first_block)[:, None], counts, 0), axis=0)
    running = tl.cumsum(total, axis=0) - total + before

    offs = tl.arange(0, BLOCK_L)
    earlier = offs[None, :] < offs[:, None]  # [i, j]: j comes before i
    for j in range(SORT_BLOCKS):
        position = (first_block + j) * BLOCK_L + offs
        valid = position < length
        code = tl.load(CODES + row * length + position, mask=valid, other=BUCKETS).to(tl.int32)
        hits = code[:, None] == buckets[None, :]
        same_before = tl.sum((earlier & (code[None, :] == code[:, None])).to(tl.int32), axis=1)
        slot = tl.sum(tl.where(hits, running[None, :], 0), axis=1) + same_before
        tl.store(PERM + row * length + slot, position.to(PERM.dtype.element_ty), mask=valid)
        running += tl.sum(hits.to(tl.int32), axis=0)


def counting_sort(codes: torch.Tensor, hist: torch.Tensor, block_l: int) -> torch.Tensor:
    """codes (N, R, L) contiguous, in [0, B); hist (N, R, cdiv(L, block_l), B') int32 from
    ``lsh_hash_triton(..., histogram=True)`` (B' >= B, a power of two). Returns perm
    (N, R, L) int32, the stable argsort of each row."""
    n, rounds, length = codes.shape
    n_blocks, buckets = hist.shape[2], hist.shape[3]
    perm = torch.empty((n, rounds, length), device=codes.device, dtype=torch.int32)
    _counting_sort_kernel[(triton.cdiv(n_blocks, SORT_BLOCKS), n, rounds)](
        codes, hist, perm, length, n_blocks,
        BLOCK_L=block_l, BUCKETS=buckets, SORT_BLOCKS=SORT_BLOCKS, num_warps=4,
    )
    return perm
