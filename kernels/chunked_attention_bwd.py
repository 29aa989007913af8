"""Backward kernels of chunked attention across all hash rounds (docs/semantics.md §4–§6).

Nothing of the forward is stored but its output and the log-sum-exp over every round
(lse, (N, L) fp32): the probabilities of all rounds are ONE softmax over the multiset of
candidates, P_ij = exp(s_ij - lse_i), so with out_i = sum_j P_ij y_j

    delta_i = dO_i . out_i                       dS_ij = P_ij (dO_i . y_j - delta_i)
    dq_i    = sum_j dS_ij k_j                    dk_j  = sum_i dS_ij x_i
    dy_j    = sum_i P_ij dO_i                    dx_j += (dk_j - k_j (k_j . dk_j)) / ||x_j||
                                                         (dk_j / eps where ||x_j|| < eps)

where the sums run over every (query, candidate) occurrence of every round (duplicates
counted, as in the forward). x enters twice, as the query and, normalised, as the key.

Per group of rounds (all R rounds in one group unless the image is huge: the forward's
``round_group`` rule), in sorted space (the ring layout of chunk_tiles), one launch each:

0. ``stage_round``: the group's rows of x, y, dO, lse and delta = dO . out (computed there,
   no (N, L, c) temporary) in ring order, and the sorted position of every pixel.
1. ``_chunked_attention_bwd_dq_kernel``: a program owns BLOCK_M consecutive query rows of
   one round and walks their key range as the forward does; it writes their dq in sorted
   order (fp32).
2. ``_chunked_attention_bwd_dkdv_kernel``: a program owns BLOCK_M consecutive ring rows
   (keys) of one round: ring row e is a candidate of the query chunks e // K - 2 .. e // K,
   a contiguous range of query rows, walked with the same end-masking. It writes dk and dy
   of its own ring rows to fp32 ring-ordered buffers.
3. ``_fold_ring_grads_kernel``: a program owns pixels and sums over the group's rounds, in
   round order, dq at each pixel's sorted position and the dk, dy of the ring rows that
   hold it (the position itself, its padding copy, and the copies before and after the
   ring), applies the normalisation backward to dk (linear in dk, so once for the sum) and
   adds the earlier groups' sums; the last group writes dX and dY in the inputs' dtypes.

Every launch writes each element from one program only, and launches run in a fixed
order: the gradients are deterministic, without atomics.

Precision: products take the forward's ``dot_precision`` (the dk/dv kernel full fp32 for
wide rows, ``tile_tables.backward_precisions``); P, dS are cast to the input
dtype for the tensor-core products and accumulate in fp32. delta is computed from
``out`` as given: for half inputs an fp32 ``out`` (the forward's normalised accumulator)
makes delta exact, which matters when the softmax is peaked (large ||x||).

Extra memory, per round of a group: the ring buffers (x, y, dO, lse, delta), the
ring-ordered dk, dy and the sorted dq in fp32, the inverse permutation (N, L) int32; with
more than one group, fp32 running sums of dX and dY for half inputs; no score tensor.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk_tiles import KEY_NORM_EPS, LOG2E, RingLayout, TileConfig, load_key_step, round_group, unmasked_steps
from .stage_round import RingBuffers
from .tile_tables import backward_precisions, backward_tiles, card_of


@triton.jit
def _dq_step(dq, q, do, lse2, delta, q_first_key, XS_n, YS_n, INV_n, e0, key_end, offs_n, offs_d, offs_c, CHUNK,
             BLOCK_D: tl.constexpr, PADDED_C: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Add one step of BLOCK_N key rows [e0, e0 + BLOCK_N) to the tile's dq."""
    rows = e0 + offs_n
    k, inv_norm, v = load_key_step(XS_n, YS_n, INV_n, rows, key_end, offs_d, offs_c, BLOCK_D, PADDED_C, MASKED)
    # Scores exactly as the forward forms them, so that exp(s - lse) is its P.
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    p = tl.exp2(s * (inv_norm * LOG2E)[None, :] - lse2[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    if MASKED:
        sees = (rows[None, :] >= q_first_key[:, None]) & (rows[None, :] < q_first_key[:, None] + 3 * CHUNK)
        ds = tl.where(sees, ds, 0.0)
    # dq = dS @ k_hat = (dS * inv_norm) @ x.
    return tl.dot((ds * inv_norm[None, :]).to(k.dtype), k, dq, input_precision=DOT_PRECISION)


@triton.jit
def _chunked_attention_bwd_dq_kernel(
    XS, YS, INV_NORM, DOS, LSE_S, DELTA_S, DQ,
    length, ring_rows,
    CHUNK,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PADDED_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dq of BLOCK_M query rows of one (round, image) pair, written in sorted order."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)  # g * N + n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, PADDED_C)
    q_valid = offs_m < length
    q_first_key = (offs_m // CHUNK) * CHUNK
    first_chunk = (pid_m * BLOCK_M) // CHUNK
    last_chunk = (tl.minimum(pid_m * BLOCK_M + BLOCK_M, length) - 1) // CHUNK

    XS_n = XS + b * ring_rows * BLOCK_D
    YS_n = YS + b * ring_rows * PADDED_C
    INV_n = INV_NORM + b * ring_rows
    q_rows = b * ring_rows + CHUNK + offs_m
    q = tl.load(XS + q_rows[:, None] * BLOCK_D + offs_d[None, :], mask=q_valid[:, None], other=0.0)
    do = tl.load(DOS + q_rows[:, None] * PADDED_C + offs_c[None, :], mask=q_valid[:, None], other=0.0)
    lse2 = tl.load(LSE_S + q_rows, mask=q_valid, other=0.0) * LOG2E
    delta = tl.load(DELTA_S + q_rows, mask=q_valid, other=0.0)

    key_start = first_chunk * CHUNK
    key_end = (last_chunk + 3) * CHUNK
    lo, hi, total = unmasked_steps(first_chunk, last_chunk, CHUNK, BLOCK_N)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for t in range(0, lo):
        dq = _dq_step(dq, q, do, lse2, delta, q_first_key, XS_n, YS_n, INV_n, key_start + t * BLOCK_N, key_end,
                      offs_n, offs_d, offs_c, CHUNK, BLOCK_D, PADDED_C, True, DOT_PRECISION)
    for t in range(lo, hi):
        dq = _dq_step(dq, q, do, lse2, delta, q_first_key, XS_n, YS_n, INV_n, key_start + t * BLOCK_N, key_end,
                      offs_n, offs_d, offs_c, CHUNK, BLOCK_D, PADDED_C, False, DOT_PRECISION)
    for t in range(hi, total):
        dq = _dq_step(dq, q, do, lse2, delta, q_first_key, XS_n, YS_n, INV_n, key_start + t * BLOCK_N, key_end,
                      offs_n, offs_d, offs_c, CHUNK, BLOCK_D, PADDED_C, True, DOT_PRECISION)
    tl.store(DQ + (b * length + offs_m)[:, None] * BLOCK_D + offs_d[None, :], dq, mask=q_valid[:, None])


@triton.jit
def _dkdv_step(dk, dv, k, v, inv2, e_rows, XS_n, DOS_n, LSE_n, DELTA_n, q0, query_end, offs_n, offs_d, offs_c,
               CHUNK, BLOCK_D: tl.constexpr, PADDED_C: tl.constexpr, MASKED: tl.constexpr,
               DOT_PRECISION: tl.constexpr):
    """Add one step of BLOCK_N query rows [q0, q0 + BLOCK_N) to the key tile's dk and dy."""
    queries = q0 + offs_n
    rows = (CHUNK + queries).to(tl.int64)  # a query's ring row (rows x PADDED_C passes 2^31 on huge images)
    if MASKED:
        q_valid = queries < query_end
        q = tl.load(XS_n + rows[:, None] * BLOCK_D + offs_d[None, :], mask=q_valid[:, None], other=0.0)
        do = tl.load(DOS_n + rows[:, None] * PADDED_C + offs_c[None, :], mask=q_valid[:, None], other=0.0)
        lse2 = tl.load(LSE_n + rows, mask=q_valid, other=0.0) * LOG2E
        delta = tl.load(DELTA_n + rows, mask=q_valid, other=0.0)
    else:
        q = tl.load(XS_n + rows[:, None] * BLOCK_D + offs_d[None, :])
        do = tl.load(DOS_n + rows[:, None] * PADDED_C + offs_c[None, :])
        lse2 = tl.load(LSE_n + rows) * LOG2E
        delta = tl.load(DELTA_n + rows)
    # Transposed scores (keys x queries), formed as the forward forms them.
    s = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
    p = tl.exp2(s * inv2[:, None] - lse2[None, :])
    if MASKED:
        q_first_key = (queries // CHUNK) * CHUNK
        sees = (e_rows[:, None] >= q_first_key[None, :]) & (e_rows[:, None] < q_first_key[None, :] + 3 * CHUNK)
        sees = sees & q_valid[None, :]
        p = tl.where(sees, p, 0.0)
    dv = tl.dot(p.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    dp = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[None, :])
    if MASKED:
        ds = tl.where(sees, ds, 0.0)
    dk = tl.dot(ds.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _chunked_attention_bwd_dkdv_kernel(
    XS, YS, INV_NORM, DOS, LSE_S, DELTA_S, DK_RING, DY_RING,
    length, ring_rows, n_chunks,
    CHUNK,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PADDED_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dk (with respect to the normalised key) and dy of BLOCK_M ring rows of one (round, image)
    pair, over every query that sees them, written to ring-ordered fp32 buffers."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)  # g * N + n
    e_rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    e_valid = e_rows < ring_rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, PADDED_C)

    XS_n = XS + b * ring_rows * BLOCK_D
    DOS_n = DOS + b * ring_rows * PADDED_C
    LSE_n = LSE_S + b * ring_rows
    DELTA_n = DELTA_S + b * ring_rows
    ring = b * ring_rows + e_rows
    k = tl.load(XS + ring[:, None] * BLOCK_D + offs_d[None, :], mask=e_valid[:, None], other=0.0)
    v = tl.load(YS + ring[:, None] * PADDED_C + offs_c[None, :], mask=e_valid[:, None], other=0.0)
    inv2 = tl.load(INV_NORM + ring, mask=e_valid, other=0.0) * LOG2E

    # Ring row e is a candidate of the query chunks e // K - 2 .. e // K (those that exist).
    first_row = pid_m * BLOCK_M
    last_row = tl.minimum(first_row + BLOCK_M, ring_rows) - 1
    query_start = tl.maximum(first_row // CHUNK - 2, 0) * CHUNK
    query_end = tl.minimum((tl.minimum(last_row // CHUNK, n_chunks - 1) + 1) * CHUNK, length)
    # Queries of chunks last_row // K - 2 .. first_row // K see every row of the tile.
    full_start = tl.maximum((last_row // CHUNK - 2) * CHUNK, query_start)
    full_end = tl.minimum((first_row // CHUNK + 1) * CHUNK, query_end)
    total = tl.cdiv(query_end - query_start, BLOCK_N)
    lo = tl.minimum(tl.cdiv(full_start - query_start, BLOCK_N), total)
    hi = tl.maximum(lo, (full_end - query_start) // BLOCK_N)

    dk = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_M, PADDED_C), dtype=tl.float32)
    for t in range(0, lo):
        dk, dv = _dkdv_step(dk, dv, k, v, inv2, e_rows, XS_n, DOS_n, LSE_n, DELTA_n, query_start + t * BLOCK_N,
                            query_end, offs_n, offs_d, offs_c, CHUNK, BLOCK_D, PADDED_C, True, DOT_PRECISION)
    for t in range(lo, hi):
        dk, dv = _dkdv_step(dk, dv, k, v, inv2, e_rows, XS_n, DOS_n, LSE_n, DELTA_n, query_start + t * BLOCK_N,
                            query_end, offs_n, offs_d, offs_c, CHUNK, BLOCK_D, PADDED_C, False, DOT_PRECISION)
    for t in range(hi, total):
        dk, dv = _dkdv_step(dk, dv, k, v, inv2, e_rows, XS_n, DOS_n, LSE_n, DELTA_n, query_start + t * BLOCK_N,
                            query_end, offs_n, offs_d, offs_c, CHUNK, BLOCK_D, PADDED_C, True, DOT_PRECISION)

    tl.store(DK_RING + ring[:, None] * BLOCK_D + offs_d[None, :], dk, mask=e_valid[:, None])
    tl.store(DY_RING + ring[:, None] * PADDED_C + offs_c[None, :], dv, mask=e_valid[:, None])


@triton.jit
def _ring_rows_of(padded, length, padding, CHUNK):
    """The (up to three) ring rows holding padded position ``padded``: K + p, the copy of the
    last chunk before the ring, the copy of the first chunk after it (-1 where none)."""
    padded_length = length + padding
    before = tl.where(padded >= padded_length - CHUNK, padded - (padded_length - CHUNK), -1)
    after = tl.where(padded < CHUNK, CHUNK + padded_length + padded, -1)
    return CHUNK + padded, before, after


@triton.jit
def _add_ring_rows(total, RING, ring_base, rows, valid, cols, WIDTH: tl.constexpr):
    return total + tl.load(RING + (ring_base + rows)[:, None] * WIDTH + cols[None, :],
                           mask=(valid & (rows >= 0))[:, None], other=0.0)


@triton.jit
def _sum_over_copies(RING, ring_base, position, has_copy, copy, valid, cols, length, padding, CHUNK,
                     WIDTH: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """Sum, over the columns ``cols`` (BLOCK_COLS of a row of WIDTH), of a ring-ordered buffer
    over every ring row that holds the pixel of each sorted position: the position and its
    padding copy, each with its wrap-around copies."""
    total = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=tl.float32)
    own, before, after = _ring_rows_of(position, length, padding, CHUNK)
    total = _add_ring_rows(total, RING, ring_base, own, valid, cols, WIDTH)
    total = _add_ring_rows(total, RING, ring_base, before, valid, cols, WIDTH)
    total = _add_ring_rows(total, RING, ring_base, after, valid, cols, WIDTH)
    own, before, after = _ring_rows_of(copy, length, padding, CHUNK)
    total = _add_ring_rows(total, RING, ring_base, own, has_copy, cols, WIDTH)
    total = _add_ring_rows(total, RING, ring_base, before, has_copy, cols, WIDTH)
    total = _add_ring_rows(total, RING, ring_base, after, has_copy, cols, WIDTH)
    return total


@triton.jit
def _sorted_positions(INVERSE, b, pixel, valid, length, padding):
    """Each pixel's sorted position in round-and-image b, and its padding copy: sorted position
    p < L also sits at padded position p + P when that is >= L."""
    position = tl.load(INVERSE + b * length + pixel, mask=valid, other=0)
    copy = position + padding
    return position, copy, valid & (copy >= length)


@triton.jit
def _add_to_group_sums(total, ACC, OUT, offsets, mask, FIRST_GROUP: tl.constexpr, LAST_GROUP: tl.constexpr):
    """Add the earlier groups' running sums; store the running sums, or on the last group the
    gradient in OUT's dtype."""
    if not FIRST_GROUP:
        total += tl.load(ACC + offsets, mask=mask, other=0.0)
    if LAST_GROUP:
        tl.store(OUT + offsets, total.to(OUT.dtype.element_ty), mask=mask)
    else:
        tl.store(ACC + offsets, total, mask=mask)


@triton.jit
def _fold_ring_grads_kernel(
    X, INVERSE, DQ, DK_RING, DY_RING, DX_ACC, DY_ACC, DX, DY,
    stride_xn, stride_xl, stride_xd,
    rounds, images, length, padding, ring_rows, d, c,
    CHUNK,
    FIRST_GROUP: tl.constexpr,
    LAST_GROUP: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PADDED_C: tl.constexpr,
    FOLD_C: tl.constexpr,
):
    """The gradients of BLOCK_ROWS pixels over the group's rounds, in round order: dq at the
    pixel's sorted position, dk and dy summed over the ring rows holding it, the
    normalisation backward of dk, added to the earlier groups' sums (DX_ACC, DY_ACC); the
    last group writes dX, dY in the inputs' dtypes."""
    pixel = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    n = tl.program_id(1).to(tl.int64)
    valid = pixel < length
    offs_d = tl.arange(0, BLOCK_D)
    dq = tl.zeros((BLOCK_ROWS, BLOCK_D), dtype=tl.float32)
    dk = tl.zeros((BLOCK_ROWS, BLOCK_D), dtype=tl.float32)
    for g in range(rounds):
        b = g * images + n
        position, copy, has_copy = _sorted_positions(INVERSE, b, pixel, valid, length, padding)
        dk += _sum_over_copies(DK_RING, b * ring_rows, position, has_copy, copy, valid, offs_d, length, padding,
                               CHUNK, BLOCK_D, BLOCK_ROWS, BLOCK_D)
        dq += tl.load(DQ + (b * length + position)[:, None] * BLOCK_D + offs_d[None, :], mask=valid[:, None],
                      other=0.0)

    d_mask = valid[:, None] & (offs_d < d)[None, :]
    pixel = pixel.to(tl.int64)
    x = tl.load(X + n * stride_xn + pixel[:, None] * stride_xl + offs_d[None, :] * stride_xd, mask=d_mask, other=0.0)
    x = x.to(tl.float32)
    norm = tl.sqrt(tl.sum(x * x, axis=1))
    inv_norm = 1.0 / tl.maximum(norm, KEY_NORM_EPS)
    # Normalisation backward, k = x / max(||x||, eps): project out k where ||x|| >= eps.
    k_hat = x * inv_norm[:, None]
    radial = tl.where(norm >= KEY_NORM_EPS, tl.sum(k_hat * dk, axis=1), 0.0)
    dx = dq + (dk - k_hat * radial[:, None]) * inv_norm[:, None]

    _add_to_group_sums(dx, DX_ACC, DX, (n * length + pixel)[:, None] * d + offs_d[None, :], d_mask,
                       FIRST_GROUP, LAST_GROUP)

    # dy in FOLD_C-column blocks: six ring rows per round are summed, and the whole of a
    # wide row at once would not fit in registers.
    for c0 in tl.static_range(0, PADDED_C, FOLD_C):
        offs_c = c0 + tl.arange(0, FOLD_C)
        dy = tl.zeros((BLOCK_ROWS, FOLD_C), dtype=tl.float32)
        for g in range(rounds):
            b = g * images + n
            position, copy, has_copy = _sorted_positions(INVERSE, b, pixel, valid, length, padding)
            dy += _sum_over_copies(DY_RING, b * ring_rows, position, has_copy, copy, valid, offs_c, length, padding,
                                   CHUNK, PADDED_C, BLOCK_ROWS, FOLD_C)
        _add_to_group_sums(dy, DY_ACC, DY, (n * length + pixel)[:, None] * c + offs_c[None, :],
                           valid[:, None] & (offs_c < c)[None, :], FIRST_GROUP, LAST_GROUP)


FOLD_ROWS = 16
FOLD_C = 128


def chunked_attention_bwd(x, y, perm, out, lse, grad_out, chunk: int, padding: int, n_chunks: int):
    """Gradients (dx, dy) of ``chunked_attention_fwd`` in x's and y's dtypes, contiguous.

    x: (N, L, d), y: (N, L, c), out and grad_out: (N, L, c), any strides; perm: (N, R, L)
    with unit stride in the last dimension; lse: (N, L) fp32 contiguous, as the forward
    returns it (``out`` may also be fp32 for half inputs: delta is then exact); chunk,
    padding, n_chunks from ``chunk_layout``. Launches, per group of G rounds (the
    forward's ``round_group`` rule): staging (with delta and the inverse permutation),
    dq, dk/dy, fold; in a fixed order, so the fp32 sums are deterministic.
    """
    n, length, d = x.shape
    c = y.shape[2]
    rounds = perm.shape[1]
    f32 = torch.float32
    layout = RingLayout(length, chunk, padding, n_chunks)
    card = card_of(x.device)
    dq_tiles, dkdv_tiles = backward_tiles(chunk, d, c, x.dtype, card)
    tiles = dq_tiles  # both kernels read the same ring widths
    grads_per_round = n * (layout.rows * (tiles.block_d + tiles.padded_c) + length * tiles.block_d) * 4
    per_round = RingBuffers.bytes_per_round(x, y, layout, tiles, gradients=True) + grads_per_round
    group = round_group(rounds, per_round, n * length * c * 4)
    ring = RingBuffers(x, y, layout, tiles, gradients=True, rounds=group)
    dq_sorted = torch.empty((group * n, length, tiles.block_d), device=x.device, dtype=f32)
    dk_ring = torch.empty((group * n, layout.rows, tiles.block_d), device=x.device, dtype=f32)
    dy_ring = torch.empty((group * n, layout.rows, tiles.padded_c), device=x.device, dtype=f32)
    dx = torch.empty((n, length, d), device=x.device, dtype=x.dtype)
    dy = torch.empty((n, length, c), device=x.device, dtype=y.dtype)
    several = group < rounds
    dx_acc = dx if dx.dtype == f32 or not several else torch.empty((n, length, d), device=x.device, dtype=f32)
    dy_acc = dy if dy.dtype == f32 or not several else torch.empty((n, length, c), device=x.device, dtype=f32)
    dq_precision, dkdv_precision = backward_precisions(x.dtype, card, d, c)

    def constexprs(t: TileConfig, precision: str) -> dict:
        return dict(BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_D=t.block_d, PADDED_C=t.padded_c,
                    DOT_PRECISION=precision, **t.options())

    for first in range(0, rounds, group):
        rounds_here = min(group, rounds - first)
        ring.stage(x, y, perm, first, rounds_here, grad_out=grad_out, out=out, lse=lse)
        _chunked_attention_bwd_dq_kernel[(triton.cdiv(length, dq_tiles.block_m), n * rounds_here)](
            XS=ring.xs, YS=ring.ys, INV_NORM=ring.inv_norm, DOS=ring.dos, LSE_S=ring.lse, DELTA_S=ring.delta,
            DQ=dq_sorted, length=length, ring_rows=layout.rows, CHUNK=chunk,
            **constexprs(dq_tiles, dq_precision),
        )
        _chunked_attention_bwd_dkdv_kernel[(triton.cdiv(layout.rows, dkdv_tiles.block_m), n * rounds_here)](
            XS=ring.xs, YS=ring.ys, INV_NORM=ring.inv_norm, DOS=ring.dos, LSE_S=ring.lse, DELTA_S=ring.delta,
            DK_RING=dk_ring, DY_RING=dy_ring, length=length, ring_rows=layout.rows, n_chunks=n_chunks, CHUNK=chunk,
            **constexprs(dkdv_tiles, dkdv_precision),
        )
        _fold_ring_grads_kernel[(triton.cdiv(length, FOLD_ROWS), n)](
            X=x, INVERSE=ring.inverse, DQ=dq_sorted, DK_RING=dk_ring, DY_RING=dy_ring,
            DX_ACC=dx_acc, DY_ACC=dy_acc, DX=dx, DY=dy,
            stride_xn=x.stride(0), stride_xl=x.stride(1), stride_xd=x.stride(2),
            rounds=rounds_here, images=n, length=length, padding=padding, ring_rows=layout.rows,
            d=d, c=c, CHUNK=chunk, FIRST_GROUP=first == 0, LAST_GROUP=first + rounds_here == rounds,
            BLOCK_ROWS=FOLD_ROWS, BLOCK_D=tiles.block_d, PADDED_C=tiles.padded_c,
            FOLD_C=min(FOLD_C, tiles.padded_c), num_warps=4,
        )
    return dx, dy
