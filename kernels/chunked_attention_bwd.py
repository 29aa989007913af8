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

Per round, in sorted space (the ring layout of chunk_tiles, staged with dO, lse, delta):

1. ``_chunked_attention_bwd_dq_kernel``: a program owns BLOCK_M consecutive query rows and
   walks their key range as the forward does; it adds dq to dX[pixel] (a pixel is the query
   of one program per round).
2. ``_chunked_attention_bwd_dkdv_kernel``: a program owns BLOCK_M consecutive ring rows
   (keys): ring row e is a candidate of the query chunks e // K - 2 .. e // K, a contiguous
   range of query rows, walked with the same end-masking. It writes dk and dy of its own
   ring rows to fp32 ring-ordered buffers.
3. ``_fold_ring_grads_kernel``: a program owns sorted positions and sums, in a fixed order,
   the ring rows that hold each position's pixel (the position itself, its padding copy,
   and the copies before and after the ring), applies the normalisation backward to dk and
   adds the result to dX[pixel] and dY[pixel].

Every launch writes each element from one program only, and launches run in a fixed
order: the gradients are deterministic, without atomics.

Precision: products take the forward's ``dot_precision`` (the dk/dv kernel full fp32 for
wide rows, ``tile_tables.backward_precisions``); P, dS are cast to the input
dtype for the tensor-core products and accumulate in fp32. delta is computed from
``out`` as given: for half inputs an fp32 ``out`` (the forward's normalised accumulator)
makes delta exact, which matters when the softmax is peaked (large ||x||).

Extra memory: dX (N, L, d) and dY (N, L, c) in fp32 (the gradients themselves for fp32
inputs), delta (N, L), the ring buffers of one round (x, y, dO, lse, delta) and the
ring-ordered dk, dy of one round in fp32; no score tensor.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk_tiles import KEY_NORM_EPS, LOG2E, RingLayout, TileConfig, load_key_step, unmasked_steps
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
    XS, YS, INV_NORM, DOS, LSE_S, DELTA_S, PERM, DX,
    stride_pn, stride_pr, stride_dxn, stride_dxl,
    round_index, is_first_round, length, ring_rows, d,
    CHUNK,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PADDED_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, PADDED_C)
    q_valid = offs_m < length
    q_first_key = (offs_m // CHUNK) * CHUNK
    first_chunk = (pid_m * BLOCK_M) // CHUNK
    last_chunk = (tl.minimum(pid_m * BLOCK_M + BLOCK_M, length) - 1) // CHUNK

    XS_n = XS + n * ring_rows * BLOCK_D
    YS_n = YS + n * ring_rows * PADDED_C
    INV_n = INV_NORM + n * ring_rows
    q_rows = n * ring_rows + CHUNK + offs_m
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

    q_pixel = tl.load(PERM + n * stride_pn + round_index * stride_pr + offs_m, mask=q_valid, other=0).to(tl.int64)
    dx_ptrs = DX + n * stride_dxn + q_pixel[:, None] * stride_dxl + offs_d[None, :]
    dx_mask = q_valid[:, None] & (offs_d < d)[None, :]
    if is_first_round == 0:
        dq += tl.load(dx_ptrs, mask=dx_mask, other=0.0)
    tl.store(dx_ptrs, dq, mask=dx_mask)


@triton.jit
def _dkdv_step(dk, dv, k, v, inv2, e_rows, XS_n, DOS_n, LSE_n, DELTA_n, q0, query_end, offs_n, offs_d, offs_c,
               CHUNK, BLOCK_D: tl.constexpr, PADDED_C: tl.constexpr, MASKED: tl.constexpr,
               DOT_PRECISION: tl.constexpr):
    """Add one step of BLOCK_N query rows [q0, q0 + BLOCK_N) to the key tile's dk and dy."""
    queries = q0 + offs_n
    rows = CHUNK + queries  # a query's ring row
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
    """dk (with respect to the normalised key) and dy of BLOCK_M ring rows, over every query
    that sees them, written to ring-ordered fp32 buffers."""
    pid_m = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    e_rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    e_valid = e_rows < ring_rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, PADDED_C)

    XS_n = XS + n * ring_rows * BLOCK_D
    DOS_n = DOS + n * ring_rows * PADDED_C
    LSE_n = LSE_S + n * ring_rows
    DELTA_n = DELTA_S + n * ring_rows
    ring = n * ring_rows + e_rows
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
                     WIDTH: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """Sum of a ring-ordered buffer over every ring row that holds the pixel of each sorted
    position: the position and its padding copy, each with its wrap-around copies."""
    total = tl.zeros((BLOCK_ROWS, WIDTH), dtype=tl.float32)
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
def _fold_ring_grads_kernel(
    X, PERM, DK_RING, DY_RING, DX, DY,
    stride_xn, stride_xl, stride_pn, stride_pr, stride_dxn, stride_dxl, stride_dyn, stride_dyl,
    round_index, is_first_round, length, padding, ring_rows, d, c,
    CHUNK,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PADDED_C: tl.constexpr,
):
    position = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    n = tl.program_id(1).to(tl.int64)
    valid = position < length
    # Sorted position p < L also sits at padded position p + P when that is >= L.
    copy = position + padding
    has_copy = valid & (copy >= length)
    ring_base = n * ring_rows
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, PADDED_C)
    dk = _sum_over_copies(DK_RING, ring_base, position, has_copy, copy, valid, offs_d, length, padding, CHUNK,
                          BLOCK_D, BLOCK_ROWS)
    dy = _sum_over_copies(DY_RING, ring_base, position, has_copy, copy, valid, offs_c, length, padding, CHUNK,
                          PADDED_C, BLOCK_ROWS)

    pixel = tl.load(PERM + n * stride_pn + round_index * stride_pr + position, mask=valid, other=0).to(tl.int64)
    d_mask = valid[:, None] & (offs_d < d)[None, :]
    x = tl.load(X + n * stride_xn + pixel[:, None] * stride_xl + offs_d[None, :], mask=d_mask, other=0.0)
    x = x.to(tl.float32)
    norm = tl.sqrt(tl.sum(x * x, axis=1))
    inv_norm = 1.0 / tl.maximum(norm, KEY_NORM_EPS)
    # Normalisation backward, k = x / max(||x||, eps): project out k where ||x|| >= eps.
    k_hat = x * inv_norm[:, None]
    radial = tl.where(norm >= KEY_NORM_EPS, tl.sum(k_hat * dk, axis=1), 0.0)
    dx_ptrs = DX + n * stride_dxn + pixel[:, None] * stride_dxl + offs_d[None, :]
    dx = (dk - k_hat * radial[:, None]) * inv_norm[:, None] + tl.load(dx_ptrs, mask=d_mask, other=0.0)
    tl.store(dx_ptrs, dx, mask=d_mask)

    c_mask = valid[:, None] & (offs_c < c)[None, :]
    dy_ptrs = DY + n * stride_dyn + pixel[:, None] * stride_dyl + offs_c[None, :]
    if is_first_round == 0:
        dy += tl.load(dy_ptrs, mask=c_mask, other=0.0)
    tl.store(dy_ptrs, dy, mask=c_mask)


FOLD_ROWS = 16


def chunked_attention_bwd(x, y, perm, out, lse, grad_out, chunk: int, padding: int, n_chunks: int):
    """Gradients (dx, dy) of ``chunked_attention_fwd`` in x's and y's dtypes.

    x: (N, L, d), y: (N, L, c), perm: (N, R, L), out and grad_out: (N, L, c), all with
    unit stride in the last dimension; lse: (N, L) fp32 contiguous, as the forward
    returns it (``out`` may also be fp32 for half inputs: delta is then exact); chunk,
    padding, n_chunks from ``chunk_layout``. Launch order (fixed, so the fp32 sums are
    deterministic): per round, staging, dq, dk/dy, fold.
    """
    n, length, d = x.shape
    c = y.shape[2]
    rounds = perm.shape[1]
    f32 = torch.float32
    layout = RingLayout(length, chunk, padding, n_chunks)
    card = card_of(x.device)
    dq_tiles, dkdv_tiles = backward_tiles(chunk, d, c, x.dtype, card)
    tiles = dq_tiles  # both kernels read the same ring widths
    ring = RingBuffers(x, y, layout, tiles, gradients=True)
    dk_ring = torch.empty((n, layout.rows, tiles.block_d), device=x.device, dtype=f32)
    dy_ring = torch.empty((n, layout.rows, tiles.padded_c), device=x.device, dtype=f32)
    dx = torch.empty((n, length, d), device=x.device, dtype=f32)
    dy = torch.empty((n, length, c), device=x.device, dtype=f32)
    delta = (grad_out.to(f32) * out.to(f32)).sum(dim=-1)
    dq_precision, dkdv_precision = backward_precisions(x.dtype, card, d, c)

    def constexprs(t: TileConfig, precision: str) -> dict:
        return dict(BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_D=t.block_d, PADDED_C=t.padded_c,
                    DOT_PRECISION=precision, **t.options())

    for r in range(rounds):
        ring.stage(x, y, perm, r, grad_out=grad_out, lse=lse, delta=delta)
        _chunked_attention_bwd_dq_kernel[(triton.cdiv(length, dq_tiles.block_m), n)](
            XS=ring.xs, YS=ring.ys, INV_NORM=ring.inv_norm, DOS=ring.dos, LSE_S=ring.lse, DELTA_S=ring.delta,
            PERM=perm, DX=dx, stride_pn=perm.stride(0), stride_pr=perm.stride(1),
            stride_dxn=dx.stride(0), stride_dxl=dx.stride(1),
            round_index=r, is_first_round=int(r == 0), length=length, ring_rows=layout.rows, d=d, CHUNK=chunk,
            **constexprs(dq_tiles, dq_precision),
        )
        _chunked_attention_bwd_dkdv_kernel[(triton.cdiv(layout.rows, dkdv_tiles.block_m), n)](
            XS=ring.xs, YS=ring.ys, INV_NORM=ring.inv_norm, DOS=ring.dos, LSE_S=ring.lse, DELTA_S=ring.delta,
            DK_RING=dk_ring, DY_RING=dy_ring, length=length, ring_rows=layout.rows, n_chunks=n_chunks, CHUNK=chunk,
            **constexprs(dkdv_tiles, dkdv_precision),
        )
        _fold_ring_grads_kernel[(triton.cdiv(length, FOLD_ROWS), n)](
            X=x, PERM=perm, DK_RING=dk_ring, DY_RING=dy_ring, DX=dx, DY=dy,
            stride_xn=x.stride(0), stride_xl=x.stride(1), stride_pn=perm.stride(0), stride_pr=perm.stride(1),
            stride_dxn=dx.stride(0), stride_dxl=dx.stride(1), stride_dyn=dy.stride(0), stride_dyl=dy.stride(1),
            round_index=r, is_first_round=int(r == 0), length=length, padding=padding, ring_rows=layout.rows,
            d=d, c=c, CHUNK=chunk, BLOCK_ROWS=FOLD_ROWS, BLOCK_D=tiles.block_d, PADDED_C=tiles.padded_c,
            num_warps=4,
        )
    return dx.to(x.dtype), dy.to(y.dtype)
