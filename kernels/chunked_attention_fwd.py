"""Forward kernel of chunked attention across all hash rounds (docs/semantics.md §4–§6).

The rounds run in groups (all of them in one group unless the image is huge, see
``round_group``), four launches per group: ``stage_round`` writes the group's rows in ring
order (chunk_tiles), ``_chunked_attention_fwd_kernel`` runs its fast and its exact launch
over (query tiles, rounds x images, channel tiles), and ``_merge_rounds_kernel`` adds the
rounds up per pixel. A forward program owns BLOCK_M consecutive sorted query positions of
one round (possibly straddling two chunks) and one tile of value channels, and walks the
contiguous key rows of their chunks' neighbourhoods with fp32 accumulators: scores, exp2,
then P @ V, all on whole row blocks (tensor cores for fp16 / bf16 / tf32).

Rounds combine by plain sums: the row maximum of every round is m_i = ||x_i||
(Cauchy-Schwarz, and the self key reaches it), so each round's unnormalised sums
exp(s - m) y and exp(s - m) (fp32, indexed by pixel, one slot per round of the group) add
up across rounds with no rescaling. Within a round a pixel is the query of one tile, so no
two forward programs write one element (row sums and m are written by the channel tile
pid_c == 0, m by round 0 only). The merge adds to the running sums of the earlier groups
the group's rounds in round order, so the result is deterministic without atomics and the
same whatever the grouping; the last group's merge divides and writes the output and the
log-sum-exp.

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

from .chunk_tiles import LOG2E, RingLayout, load_key_step, round_group, unmasked_steps
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
    XS, YS, INV_NORM, Y_NONFINITE, PERM, PARTIAL, PARTIAL_SUM, ROW_MAX,
    stride_pn, stride_pr,
    first_round, images, length, ring_rows, c,
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
    b = tl.program_id(1).to(tl.int64)  # g * N + n: round first_round + g of image n
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

    XS_n = XS + b * ring_rows * BLOCK_D
    YS_n = YS + b * ring_rows * PADDED_C
    INV_n = INV_NORM + b * ring_rows
    q = tl.load(XS_n + (CHUNK + offs_m)[:, None].to(tl.int64) * BLOCK_D + offs_d[None, :],
                mask=q_valid[:, None], other=0.0)
    q_f32 = q.to(tl.float32)
    # Row maximum of every round, in log2 units.
    m2 = tl.sqrt(tl.sum(q_f32 * q_f32, axis=1)) * LOG2E

    key_start = first_chunk * CHUNK
    key_end = (last_chunk + 3) * CHUNK
    lo, hi, total = unmasked_steps(first_chunk, last_chunk, CHUNK, BLOCK_N)
    nonfinite = 0
    for t in range(0, total):
        flags = tl.load(Y_NONFINITE + b * ring_rows + key_start + t * BLOCK_N + offs_n,
                        mask=key_start + t * BLOCK_N + offs_n < key_end, other=0)
        nonfinite = tl.maximum(nonfinite, tl.max(flags.to(tl.int32), axis=0))

    # Each tile runs in exactly one of the two launches of a group: the fast one when its
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
        # This round's sums, by pixel.
        # 32-bit division: a 64-bit one is a subroutine call with a stack frame.
        n = (tl.program_id(1) % images).to(tl.int64)
        round_index = first_round + tl.program_id(1) // images
        q_pixel = tl.load(PERM + n * stride_pn + round_index * stride_pr + offs_m, mask=q_valid,
                          other=0).to(tl.int64)
        tl.store(PARTIAL + (b * length + q_pixel)[:, None] * c + offs_c[None, :], acc,
                 mask=q_valid[:, None] & (offs_c < c)[None, :])
        if pid_c == 0:
            tl.store(PARTIAL_SUM + b * length + q_pixel, row_sum, mask=q_valid)
            if round_index == 0:
                tl.store(ROW_MAX + n * length + q_pixel, m2, mask=q_valid)


@triton.jit
def _merge_rounds_kernel(
    PARTIAL, PARTIAL_SUM, ACC, ROW_SUM, OUT, LSE,
    stride_on, stride_ol, stride_oc,
    rounds, images, length, c,
    FIRST_GROUP: tl.constexpr,
    LAST_GROUP: tl.constexpr,
    STORE_FP32_OUT: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    PADDED_C: tl.constexpr,
    MERGE_C: tl.constexpr,
):
    """Add to the earlier groups' running sums (ACC, ROW_SUM) the group's ``rounds`` per-round
    sums of BLOCK_ROWS pixels, in round order; store the running sums, or on the last group
    the output (and its fp32 copy in ACC when asked) and the log-sum-exp. LSE holds the row
    maximum (log2 units) until then."""
    pixel = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    n = tl.program_id(1).to(tl.int64)
    valid = pixel < length
    # Earlier rounds first, then this group's in round order: the sums do not depend on
    # how the rounds are grouped.
    row_sum = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    if not FIRST_GROUP:
        row_sum += tl.load(ROW_SUM + n * length + pixel, mask=valid, other=0.0)
    for g in range(rounds):
        row_sum += tl.load(PARTIAL_SUM + (g * images + n) * length + pixel, mask=valid, other=0.0)
    if LAST_GROUP:
        row_sum = tl.where(valid, row_sum, 1.0)
        m2 = tl.load(LSE + n * length + pixel, mask=valid, other=0.0)
        tl.store(LSE + n * length + pixel, (m2 + tl.log2(row_sum)) / LOG2E, mask=valid)
    else:
        tl.store(ROW_SUM + n * length + pixel, row_sum, mask=valid)
    for c0 in tl.static_range(0, PADDED_C, MERGE_C):
        cols = c0 + tl.arange(0, MERGE_C)
        mask = valid[:, None] & (cols < c)[None, :]
        acc = tl.zeros((BLOCK_ROWS, MERGE_C), dtype=tl.float32)
        acc_ptrs = ACC + (n * length + pixel)[:, None] * c + cols[None, :]
        if not FIRST_GROUP:
            acc += tl.load(acc_ptrs, mask=mask, other=0.0)
        for g in range(rounds):
            acc += tl.load(PARTIAL + ((g * images + n) * length + pixel)[:, None] * c + cols[None, :],
                           mask=mask, other=0.0)
        if LAST_GROUP:
            out = acc / row_sum[:, None]
            tl.store(OUT + n * stride_on + pixel[:, None].to(tl.int64) * stride_ol + cols[None, :] * stride_oc,
                     out.to(OUT.dtype.element_ty), mask=mask)
            if STORE_FP32_OUT:
                tl.store(acc_ptrs, out, mask=mask)
        else:
            tl.store(acc_ptrs, acc, mask=mask)


MERGE_ROWS = 16
MERGE_C = 64


def chunked_attention_fwd(x, y, perm, chunk: int, padding: int, n_chunks: int, keep_fp32_out: bool = False):
    """Launch the forward over every round. Returns (out (N, L, c) in x.dtype, contiguous, lse
    (N, L) fp32, out_fp32).

    ``out_fp32`` is the output before rounding to a half dtype, kept when asked for
    (else None; for fp32 it is ``out`` itself): the backward's delta = rowsum(dO * out)
    cancels against the self key's term when the softmax is peaked, and the rounding of
    a half-precision ``out`` would dominate the gradient.

    x: (N, L, d), y: (N, L, c), any strides; perm: (N, R, L) int32/int64 with unit stride
    in the last dimension; chunk, padding, n_chunks from ``chunk_layout``. Launches: per
    group of G rounds (``round_group``; G = R unless the image is huge), staging, the fast
    and the exact attention launch, and the merge. Extra memory: the ring buffers of G
    rounds ((L + P + 2K) rows of x and y each, padded to the tile widths), the per-round
    sums of G rounds ((N, L, c) and (N, L) fp32 each), and with more than one group (or
    half-precision outputs kept for the backward) an fp32 accumulator of the output's
    shape and an (N, L) fp32 row sum.
    """
    n, length, d = x.shape
    c = y.shape[2]
    rounds = perm.shape[1]
    f32 = torch.float32
    layout = RingLayout(length, chunk, padding, n_chunks)
    card = card_of(x.device)
    tiles = forward_tiles(chunk, d, c, x.dtype, card)
    per_round = RingBuffers.bytes_per_round(x, y, layout, tiles, gradients=False) + n * length * (c + 1) * 4
    group = round_group(rounds, per_round, n * length * c * 4)
    ring = RingBuffers(x, y, layout, tiles, gradients=False, rounds=group)
    partial = torch.empty((group, n, length, c), device=x.device, dtype=f32)
    partial_sum = torch.empty((group, n, length), device=x.device, dtype=f32)
    out = torch.empty((n, length, c), device=y.device, dtype=y.dtype)
    lse = torch.empty((n, length), device=x.device, dtype=f32)
    several = group < rounds
    keep = keep_fp32_out and out.dtype != f32
    if out.dtype == f32 or not (several or keep):
        acc = out  # read and written only as fp32, or not at all
    else:
        acc = torch.empty((n, length, c), device=y.device, dtype=f32)
    row_sum = torch.empty((n, length), device=x.device, dtype=f32) if several else lse
    precision = dot_precision(x.dtype, card)
    for first in range(0, rounds, group):
        rounds_here = min(group, rounds - first)
        ring.stage(x, y, perm, first, rounds_here)
        # The exact launch holds a second product's operands: 16-row steps.
        for exact in (False, True):
            _chunked_attention_fwd_kernel[(triton.cdiv(length, tiles.block_m), n * rounds_here, tiles.channel_tiles)](
                XS=ring.xs, YS=ring.ys, INV_NORM=ring.inv_norm, Y_NONFINITE=ring.y_nonfinite, PERM=perm,
                PARTIAL=partial, PARTIAL_SUM=partial_sum, ROW_MAX=lse,
                stride_pn=perm.stride(0), stride_pr=perm.stride(1),
                first_round=first, images=n, length=length, ring_rows=layout.rows, c=c, CHUNK=chunk,
                BLOCK_M=tiles.block_m, BLOCK_N=16 if exact else tiles.block_n,
                BLOCK_D=tiles.block_d, BLOCK_C=tiles.block_c,
                PADDED_C=tiles.padded_c, DOT_PRECISION=precision, EXACT_NONFINITE=exact,
                **tiles.options(),
            )
        merge_c = min(MERGE_C, triton.next_power_of_2(c))
        _merge_rounds_kernel[(triton.cdiv(length, MERGE_ROWS), n)](
            PARTIAL=partial, PARTIAL_SUM=partial_sum, ACC=acc, ROW_SUM=row_sum, OUT=out, LSE=lse,
            stride_on=out.stride(0), stride_ol=out.stride(1), stride_oc=out.stride(2),
            rounds=rounds_here, images=n, length=length, c=c,
            FIRST_GROUP=first == 0, LAST_GROUP=first + rounds_here == rounds, STORE_FP32_OUT=keep,
            BLOCK_ROWS=MERGE_ROWS, PADDED_C=triton.cdiv(c, merge_c) * merge_c, MERGE_C=merge_c, num_warps=2,
        )
    return out, lse, (acc if keep_fp32_out else None)
