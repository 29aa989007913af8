"""Spherical LSH in one kernel: projection and argmax over [p, -p] without the
(N, R, L, B) projection tensor ever reaching memory.

For the sort (``counting_sort``) the kernel also writes, per block of BLOCK_L positions,
how many of them fall in each bucket, so the codes can go out in one byte and the sort
needs no pass of its own to count them.

The projection is a rank-1 update per input channel rather than a tl.dot: it is
exact fp32 (or fp64) arithmetic, never TF32, so codes match the reference, and any
float dtype works; B // 2 <= 64 columns make it cheap next to the attention.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_L = 64


@triton.jit
def _lsh_hash_kernel(
    X, ROT, CODES, HIST,
    stride_xn, stride_xl, stride_xd,
    stride_rd, stride_rr,
    stride_cn, stride_cr,
    length, d, half,
    BLOCK_L: tl.constexpr,
    BLOCK_H: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    HISTOGRAM: tl.constexpr,
):
    pid_l = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    r = tl.program_id(2).to(tl.int64)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_h = tl.arange(0, BLOCK_H)
    l_valid = offs_l < length
    h_valid = offs_h < half
    x_rows = X + n * stride_xn + offs_l.to(tl.int64) * stride_xl
    rot_round = ROT + r * stride_rr + offs_h
    projected = tl.zeros((BLOCK_L, BLOCK_H), dtype=ACC_DTYPE)
    for k in range(d):
        # Column k of a channel-major x sits k * L elements on: advance the pointers (64-bit).
        x_k = tl.load(x_rows, mask=l_valid, other=0.0).to(ACC_DTYPE)
        rot_k = tl.load(rot_round + k * stride_rd, mask=h_valid, other=0.0).to(ACC_DTYPE)
        projected += x_k[:, None] * rot_k[None, :]
        x_rows += stride_xd
    # argmax over [p, -p], first maximum on ties: the p half comes first.
    # torch.argmax ranks NaN above everything, so a NaN projection (a NaN or infinite x)
    # counts as +inf here: a NaN row gets code 0 as in the reference, never a masked lane.
    projected = tl.where(projected != projected, float("inf"), projected)
    pos = tl.where(h_valid[None, :], projected, -float("inf"))
    neg = tl.where(h_valid[None, :], -projected, -float("inf"))
    pos_max, pos_arg = tl.max(pos, axis=1, return_indices=True, return_indices_tie_break_left=True)
    neg_max, neg_arg = tl.max(neg, axis=1, return_indices=True, return_indices_tie_break_left=True)
    code = tl.where(pos_max >= neg_max, pos_arg, half + neg_arg)
    tl.store(CODES + n * stride_cn + r * stride_cr + offs_l, code.to(CODES.dtype.element_ty), mask=l_valid)
    if HISTOGRAM:
        # Bucket counts of this block: HIST[n, r, pid_l, :], 2 * BLOCK_H buckets.
        buckets = tl.arange(0, 2 * BLOCK_H)
        hits = (code[:, None] == buckets[None, :]) & l_valid[:, None]
        blocks = tl.num_programs(0)
        tl.store(HIST + ((n * tl.num_programs(2) + r) * blocks + pid_l) * (2 * BLOCK_H) + buckets,
                 tl.sum(hits.to(tl.int32), axis=0))


def lsh_hash_triton(x: torch.Tensor, rotations: torch.Tensor, codes_dtype: torch.dtype = torch.int64,
                    histogram: bool = False):
    """x: (N, L, d), any strides; rotations: (d, R, H) unit stride in H. Returns codes (N, R, L)
    in [0, 2H) of ``codes_dtype``; with ``histogram``, also the bucket counts of every block
    of BLOCK_L positions, (N, R, cdiv(L, BLOCK_L), 2 next_power_of_2(H)) int32."""
    n, length, d = x.shape
    _, rounds, half = rotations.shape
    codes = torch.empty((n, rounds, length), device=x.device, dtype=codes_dtype)
    grid = (triton.cdiv(length, BLOCK_L), n, rounds)
    block_h = triton.next_power_of_2(half)
    hist = torch.empty((n, rounds, grid[0], 2 * block_h) if histogram else (0,), device=x.device,
                       dtype=torch.int32)
    acc_dtype = tl.float64 if x.dtype == torch.float64 else tl.float32
    _lsh_hash_kernel[grid](
        x, rotations, codes, hist,
        x.stride(0), x.stride(1), x.stride(2),
        rotations.stride(0), rotations.stride(1),
        codes.stride(0), codes.stride(1),
        length, d, half,
        BLOCK_L=BLOCK_L,
        BLOCK_H=block_h,
        ACC_DTYPE=acc_dtype,
        HISTOGRAM=histogram,
        num_warps=num_warps(half),
    )
    return (codes, hist) if histogram else codes


def num_warps(half: int) -> int:
    """8 warps hold the (BLOCK_L, 64) projections of 128 buckets (fp64 too) without spills."""
    return 8 if half > 32 else 4
