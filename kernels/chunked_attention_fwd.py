"""Forward kernel of chunked attention across all hash rounds (docs/semantics.md §4–§6).

Per round: ``stage_round`` writes the round's rows in ring order (chunk_tiles), then one
launch of ``_chunked_attention_fwd_kernel``. A program owns BLOCK_M consecutive sorted
query positions (possibly straddling two chunks) and one tile of value channels, and walks
the contiguous key rows of their chunks' neighbourhoods with fp32 accumulators: scores,
exp2, then P @ V, all on whole row blocks (tensor cores for fp16 / bf16 / tf32).

Rounds are combined without one output per round: the row maximum of every round is
m_i = ||x_i|| (Cauchy-Schwarz, and the self key reaches it), so the unnormalised sums
exp(s - m) y and exp(s - m) add up across rounds in fp32 buffers indexed by pixel. Within
a round a pixel is the query of one tile, and the row sums are read and written only by
the channel tile pid_c == 0 (the last round, which writes none, lets every channel tile
read them): no two programs of a launch touch an element one of them writes. Round order
is fixed, so the result is deterministic. The last round divides and writes the output and
the log-sum-exp.

Non-finite values: a masked pair contributes exp(...) = 0 to P, but 0 * NaN is NaN in
P @ V, so a non-finite value row inside a straddling tile's key range would reach the
other chunk's queries. The staging pass flags such rows, and each round makes two
launches over the same tiles: the fast one runs the tiles whose key range is finite, the
exact one (one product per query chunk, the other chunks' keys zeroed, kept for that
chunk's rows only) the rest, so a NaN
or infinite pixel reaches exactly the queries that see it, as in the reference. Each tile
runs in one launch; the exact launch's other programs only read the flags.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk_tiles import LOG2E, RingLayout, load_key_step, unmasked_steps
from .stage_round import RingBuffers
from .tile_tables import card_of, dot_precision, forward_tiles


@triton.jit
def _attend_step(acc, row_sum, q, m2, q_first_key, XS_n, YS_n, INV_n, e0, key_end, offs_n, offs_d, offs_c,
                 CHUNK, BLOCK_D: tl.constexpr, PADDED_C: tl.constexpr, MASKED: tl.constexpr,
                 EXACT_NONFINITE: tl.constexpr, first_chunk, last_chunk, DOT_PRECISION: tl.constexpr):
    """Add one step of BLOCK_N key rows [e0, e0 + BLOCK_N) to the tile's sums."""
    rows = e0 + offs_n
    k, inv_norm, v = load_key_step(XS_n, YS_n, INV_n, rows, key_end, offs_d, offs_c, BLOCK_D, PADDED_C, MASKED)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    p = tl.exp2(s * (inv_norm * LOG2E)[None, :] - m2[:, None])
    if MASKED:
        sees = (rows[None, :] >= q_first_key[:, None]) & (rows[None, :] < q_first_key[:, None] + 3 * CHUNK)
        p = tl.where(sees, p, 0.0)
    row_sum += tl.sum(p, axis=1)
    if EXACT_NONFINITE:
        # One product per query chunk with the keys outside its neighbourhood zeroed, kept
        # for that chunk's rows only (the other rows' 0 * NaN is dropped, not added).
        for chunk_index in range(first_chunk, last_chunk + 1):
            first_key = chunk_index * CHUNK
            own = q_first_key == first_key
            seen = (rows >= first_key) & (rows < first_key + 3 * CHUNK)
            product = tl.dot(p.to(v.dtype), tl.where(seen[:, None], v, 0.0), acc, input_precision=DOT_PRECISION)
            acc = tl.where(own[:, None], product, acc)
    else:
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, row_sum


@triton.jit
def _chunked_attention_fwd_kernel(
    XS, YS, INV_NORM, Y_NONFINITE, PERM, ACC, ROW_SUM, OUT, LSE,
    stride_pn, stride_pr, stride_an, stride_al, stride_on, stride_ol,
    round_index, is_first_round, is_last_round, store_fp32_out, length, ring_rows, c,
    CHUNK,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PADDED_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    EXACT_NONFINITE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    pid_c = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    # Padded positions (>= L) are keys only, never queries.
    q_valid = offs_m < length
    q_chunk = offs_m // CHUNK
    q_first_key = q_chunk * CHUNK
    first_chunk = (pid_m * BLOCK_M) // CHUNK
    last_chunk = (tl.minimum(pid_m * BLOCK_M + BLOCK_M, length) - 1) // CHUNK

    XS_n = XS + n * ring_rows * BLOCK_D
    YS_n = YS + n * ring_rows * PADDED_C
    INV_n = INV_NORM + n * ring_rows
    q = tl.load(XS_n + (CHUNK + offs_m)[:, None] * BLOCK_D + offs_d[None, :], mask=q_valid[:, None], other=0.0)
    q_f32 = q.to(tl.float32)
    # Row maximum of every round, in log2 units.
    m2 = tl.sqrt(tl.sum(q_f32 * q_f32, axis=1)) * LOG2E

    key_start = first_chunk * CHUNK
    key_end = (last_chunk + 3) * CHUNK
    lo, hi, total = unmasked_steps(first_chunk, last_chunk, CHUNK, BLOCK_N)
    nonfinite = 0
    for t in range(0, total):
        flags = tl.load(Y_NONFINITE + n * ring_rows + key_start + t * BLOCK_N + offs_n,
                        mask=key_start + t * BLOCK_N + offs_n < key_end, other=0)
        nonfinite = tl.maximum(nonfinite, tl.max(flags.to(tl.int32), axis=0))

    # Each tile runs in exactly one of the two launches of a round: the fast one when its
    # key range is finite, the exact one otherwise.
    if EXACT_NONFINITE:
        runs = nonfinite != 0
    else:
        runs = nonfinite == 0
    if runs:
        acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
        row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
        if EXACT_NONFINITE:
            for t in range(0, total):
                acc, row_sum = _attend_step(acc, row_sum, q, m2, q_first_key, XS_n, YS_n, INV_n,
                                            key_start + t * BLOCK_N, key_end, offs_n, offs_d, offs_c, CHUNK,
                                            BLOCK_D, PADDED_C, True, True, first_chunk, last_chunk, DOT_PRECISION)
        else:
            for t in range(0, lo):
                acc, row_sum = _attend_step(acc, row_sum, q, m2, q_first_key, XS_n, YS_n, INV_n,
                                            key_start + t * BLOCK_N, key_end, offs_n, offs_d, offs_c, CHUNK,
                                            BLOCK_D, PADDED_C, True, False, first_chunk, last_chunk, DOT_PRECISION)
            for t in range(lo, hi):
                acc, row_sum = _attend_step(acc, row_sum, q, m2, q_first_key, XS_n, YS_n, INV_n,
                                            key_start + t * BLOCK_N, key_end, offs_n, offs_d, offs_c, CHUNK,
                                            BLOCK_D, PADDED_C, False, False, first_chunk, last_chunk, DOT_PRECISION)
            for t in range(hi, total):
                acc, row_sum = _attend_step(acc, row_sum, q, m2, q_first_key, XS_n, YS_n, INV_n,
                                            key_start + t * BLOCK_N, key_end, offs_n, offs_d, offs_c, CHUNK,
                                            BLOCK_D, PADDED_C, True, False, first_chunk, last_chunk, DOT_PRECISION)
        _combine_round(acc, row_sum, m2, PERM, ACC, ROW_SUM, OUT, LSE, n, offs_m, offs_c, q_valid, pid_c,
                       stride_pn, stride_pr, stride_an, stride_al, stride_on, stride_ol,
                       round_index, is_first_round, is_last_round, store_fp32_out, length, c)


@triton.jit
def _combine_round(acc, row_sum, m2, PERM, ACC, ROW_SUM, OUT, LSE, n, offs_m, offs_c, q_valid, pid_c,
                   stride_pn, stride_pr, stride_an, stride_al, stride_on, stride_ol,
                   round_index, is_first_round, is_last_round, store_fp32_out, length, c):
    """Add this round's sums of a tile to the earlier rounds' (by pixel); the last round
    divides and writes the output and the log-sum-exp."""
    q_pixel = tl.load(PERM + n * stride_pn + round_index * stride_pr + offs_m, mask=q_valid, other=0).to(tl.int64)
    acc_ptrs = ACC + n * stride_an + q_pixel[:, None] * stride_al + offs_c[None, :]
    acc_mask = q_valid[:, None] & (offs_c < c)[None, :]
    row_sum_ptrs = ROW_SUM + n * length + q_pixel
    if is_first_round == 0:
        acc += tl.load(acc_ptrs, mask=acc_mask, other=0.0)
        if (is_last_round != 0) | (pid_c == 0):
            row_sum += tl.load(row_sum_ptrs, mask=q_valid, other=1.0)
    if is_last_round != 0:
        out = acc / row_sum[:, None]
        out_ptrs = OUT + n * stride_on + q_pixel[:, None] * stride_ol + offs_c[None, :]
        tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=acc_mask)
        if store_fp32_out != 0:
            tl.store(acc_ptrs, out, mask=acc_mask)
        if pid_c == 0:
            tl.store(LSE + n * length + q_pixel, (m2 + tl.log2(row_sum)) / LOG2E, mask=q_valid)
    else:
        tl.store(acc_ptrs, acc, mask=acc_mask)
        if pid_c == 0:
            tl.store(row_sum_ptrs, row_sum, mask=q_valid)


def chunked_attention_fwd(x, y, perm, chunk: int, padding: int, n_chunks: int, keep_fp32_out: bool = False):
    """Launch the forward over every round. Returns (out (N, L, c) in x.dtype, lse (N, L) fp32,
    out_fp32).

    ``out_fp32`` is the output before rounding to a half dtype, kept when asked for
    (else None; for fp32 it is ``out`` itself): the backward's delta = rowsum(dO * out)
    cancels against the self key's term when the softmax is peaked, and the rounding of
    a half-precision ``out`` would dominate the gradient.

    x: (N, L, d), y: (N, L, c) with unit stride in the last dimension; perm: (N, R, L)
    int32/int64 with unit stride in the last dimension; chunk, padding, n_chunks from
    ``chunk_layout``. Extra memory: the ring buffers of one round ((L + P + 2K) rows of x
    and y, padded to the tile widths), an fp32 accumulator of the output's shape for
    half-precision outputs, and two (N, L) fp32 vectors.
    """
    n, length, d = x.shape
    c = y.shape[2]
    rounds = perm.shape[1]
    layout = RingLayout(length, chunk, padding, n_chunks)
    card = card_of(x.device)
    tiles = forward_tiles(chunk, d, c, x.dtype, card)
    ring = RingBuffers(x, y, layout, tiles, gradients=False)
    out = torch.empty_like(y)
    lse = torch.empty((n, length), device=x.device, dtype=torch.float32)
    acc = out if out.dtype == torch.float32 else torch.empty(y.shape, device=y.device, dtype=torch.float32)
    row_sum = torch.empty((n, length), device=x.device, dtype=torch.float32) if rounds > 1 else lse
    grid = (triton.cdiv(length, tiles.block_m), n, tiles.channel_tiles)
    for r in range(rounds):
        ring.stage(x, y, perm, r)
        # The exact launch holds a second product's operands: 16-row steps.
        for exact in (False, True):
            _chunked_attention_fwd_kernel[grid](
                XS=ring.xs, YS=ring.ys, INV_NORM=ring.inv_norm, Y_NONFINITE=ring.y_nonfinite, PERM=perm,
                ACC=acc, ROW_SUM=row_sum, OUT=out, LSE=lse,
                stride_pn=perm.stride(0), stride_pr=perm.stride(1),
                stride_an=acc.stride(0), stride_al=acc.stride(1),
                stride_on=out.stride(0), stride_ol=out.stride(1),
                round_index=r, is_first_round=int(r == 0), is_last_round=int(r == rounds - 1),
                store_fp32_out=int(keep_fp32_out and acc is not out),
                length=length, ring_rows=layout.rows, c=c, CHUNK=chunk,
                BLOCK_M=tiles.block_m, BLOCK_N=16 if exact else tiles.block_n,
                BLOCK_D=tiles.block_d, BLOCK_C=tiles.block_c,
                PADDED_C=tiles.padded_c, DOT_PRECISION=dot_precision(x.dtype, card), EXACT_NONFINITE=exact,
                **tiles.options(),
            )
    return out, lse, (acc if keep_fp32_out else None)
