"""Backward kernels of chunked attention across all hash rounds (spec sections 4-6).

Nothing of the forward is stored but its output and the log-sum-exp over every round
(lse, (N, L) fp32): the probabilities of all rounds are ONE softmax over the multiset of
candidates, P_ij = exp(s_ij - lse_i), so with out_i = sum_j P_ij y_j

    delta_i = dO_i . out_i                       dS_ij = P_ij (dO_i . y_j - delta_i)
    dq_i    = sum_j dS_ij k_j                    dk_j  = sum_i dS_ij x_i
    dy_j    = sum_i P_ij dO_i                    dx_j += (dk_j - k_j (k_j . dk_j)) / ||x_j||
                                                         (dk_j / eps where ||x_j|| < eps)

where the sums run over every (query, candidate) occurrence of every round (duplicates
counted, as in the forward). x enters twice, as the query and, normalised, as the key:
both paths land in one fp32 buffer dX indexed by pixel.

Two kernels, launched in a fixed order (dq of every round, then per round the key
positions [0, L) and the padded positions [L, L + P)), with read-modify-writes of fp32
buffers by pixel and no atomics, so the result is deterministic:

* ``_chunked_attention_bwd_dq_kernel``: a program owns a tile of query positions inside
  one chunk (as in the forward) and walks its 3K candidates as the flat range [0, 3K);
  it adds dq to dX[pixel]. Within a round a pixel is the query of exactly one program.
  The first round also computes delta (it holds dO and reads out for its queries).
* ``_chunked_attention_bwd_dkdv_kernel``: a program owns a tile of key positions inside
  one chunk c of the padded sequence. The queries that see chunk c are those of chunks
  c, c + 1, c - 1 (mod n_chunks): one per (query chunk, neighbour offset) pair, so the
  list keeps the forward's multiplicities when n_chunks is 1 or 2. They are walked as
  the flat range [0, 3K) (padded positions are never queries). The program applies the
  normalisation backward to its dk and adds it to dX[pixel], and adds dy to dY[pixel].
  A pixel can be a key twice in one round (sorted position p < L and its padding copy
  p + P >= L), so each round launches the positions [0, L) and then [L, L + P)
  separately: within a launch every pixel is touched at most once. For c > 64 the dk
  and the dy of a key tile come from two launches (``BackwardConfig.key_passes``): dS
  needs all of dO . y while dy is split into channel tiles, and one program holding
  both would run out of registers.

Precision: products take the forward's ``dot_precision``; P, dS are cast to the input
dtype for the tensor-core products and accumulate in fp32. delta is computed from
``out`` as given: for half inputs an fp32 ``out`` (the forward's normalised accumulator)
makes delta exact, which matters when the softmax is peaked (large ||x||).

Extra memory: dX (N, L, d) and dY (N, L, c) in fp32 (the gradients themselves for fp32
inputs) and delta (N, L) fp32; no score tensor.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk_tiles import KEY_NORM_EPS, LOG2E, candidate_keys, dtype_variants, fitting_block
from .chunked_attention_fwd import dot_precision


@triton.jit
def query_pixels(
    perm_round,  # pointer to perm[n, r, :]
    t,  # query occurrence indices in [0, 3 * CHUNK), any shape
    chunk_index,  # the key chunk c (scalar)
    length,
    n_chunks,
    CHUNK,
):
    """Pixel index (int64) of query occurrence t of the keys in chunk c, and its validity.

    Occurrence t is the query at offset t % CHUNK of chunk c + (0, +1, -1)[t // CHUNK]
    (wrapping around); it exists when that position is < L (padding is never a query).
    """
    which = t // CHUNK
    shift = tl.where(which == 1, 1, tl.where(which == 2, n_chunks - 1, 0))
    position = ((chunk_index + shift) % n_chunks) * CHUNK + t % CHUNK
    valid = (t < 3 * CHUNK) & (position < length)
    pixel = tl.load(perm_round + position, mask=valid, other=0).to(tl.int64)
    return pixel, valid


@triton.jit
def _chunked_attention_bwd_dq_kernel(
    X, Y, PERM, OUT, DOUT, LSE, DELTA, DX,
    stride_xn, stride_xl,
    stride_yn, stride_yl,
    stride_pn, stride_pr,
    stride_on, stride_ol,
    stride_gn, stride_gl,
    stride_dxn, stride_dxl,
    round_index, is_first_round, length, padding, n_chunks, d, c,
    CHUNK, Q_TILES_PER_CHUNK,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    C_TILED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dq of one tile of queries (one chunk) over its 3K candidates, added to dX by pixel.

    C_TILED: c > BLOCK_C, dO . y is summed over channel tiles (reloaded per key tile);
    otherwise dO stays in registers. The first round computes delta = dO . out.
    """
    pid_q = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    chunk_index = pid_q // Q_TILES_PER_CHUNK
    chunk_start = chunk_index * CHUNK
    offs_q = chunk_start + (pid_q % Q_TILES_PER_CHUNK) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_valid = (offs_q < chunk_start + CHUNK) & (offs_q < length)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    d_valid = offs_d < d

    perm_round = PERM + n * stride_pn + round_index * stride_pr
    q_pixel = tl.load(perm_round + offs_q, mask=q_valid, other=0).to(tl.int64)
    x_n = X + n * stride_xn
    y_n = Y + n * stride_yn
    do_rows = DOUT + n * stride_gn + q_pixel * stride_gl
    qd_mask = q_valid[:, None] & d_valid[None, :]
    q = tl.load(x_n + q_pixel[:, None] * stride_xl + offs_d[None, :], mask=qd_mask, other=0.0)
    lse2 = tl.load(LSE + n * length + q_pixel, mask=q_valid, other=0.0) * LOG2E
    delta_ptrs = DELTA + n * length + q_pixel
    if is_first_round != 0:
        delta = tl.zeros((BLOCK_Q,), dtype=tl.float32)
        for c0 in range(0, c, BLOCK_C):
            qc_mask = q_valid[:, None] & (c0 + offs_c < c)[None, :]
            do = tl.load(do_rows[:, None] + (c0 + offs_c)[None, :], mask=qc_mask, other=0.0)
            o = tl.load(OUT + n * stride_on + q_pixel[:, None] * stride_ol + (c0 + offs_c)[None, :],
                        mask=qc_mask, other=0.0)
            delta += tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
        tl.store(delta_ptrs, delta, mask=q_valid)
    else:
        delta = tl.load(delta_ptrs, mask=q_valid, other=0.0)
    if not C_TILED:
        do = tl.load(do_rows[:, None] + offs_c[None, :], mask=q_valid[:, None] & (offs_c < c)[None, :], other=0.0)

    dq = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for t0 in range(0, 3 * CHUNK, BLOCK_K):
        offs_t = t0 + tl.arange(0, BLOCK_K)
        k, inv_norm, k_pixel, k_valid = candidate_keys(
            x_n, stride_xl, perm_round, offs_t, chunk_index, length, padding, n_chunks, CHUNK, offs_d, d_valid)
        # Scores exactly as the forward forms them, so that exp(s - lse) is its P.
        s2 = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * (inv_norm * LOG2E)[None, :]
        p = tl.exp2(s2 - lse2[:, None])
        p = tl.where(q_valid[:, None] & k_valid[None, :], p, 0.0)
        v_rows = y_n + k_pixel * stride_yl
        if C_TILED:
            dp = tl.zeros((BLOCK_Q, BLOCK_K), dtype=tl.float32)
            for c0 in range(0, c, BLOCK_C):
                c_valid = (c0 + offs_c) < c
                do = tl.load(do_rows[:, None] + (c0 + offs_c)[None, :],
                             mask=q_valid[:, None] & c_valid[None, :], other=0.0)
                v = tl.load(v_rows[:, None] + (c0 + offs_c)[None, :],
                            mask=k_valid[:, None] & c_valid[None, :], other=0.0)
                dp = tl.dot(do, tl.trans(v), dp, input_precision=DOT_PRECISION)
        else:
            v = tl.load(v_rows[:, None] + offs_c[None, :], mask=k_valid[:, None] & (offs_c < c)[None, :], other=0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        k_hat = (k.to(tl.float32) * inv_norm[:, None]).to(k.dtype)
        dq = tl.dot(ds.to(k.dtype), k_hat, dq, input_precision=DOT_PRECISION)

    dx_ptrs = DX + n * stride_dxn + q_pixel[:, None] * stride_dxl + offs_d[None, :]
    if is_first_round == 0:
        dq += tl.load(dx_ptrs, mask=qd_mask, other=0.0)
    tl.store(dx_ptrs, dq, mask=qd_mask)


@triton.jit
def _chunked_attention_bwd_dkdv_kernel(
    X, Y, PERM, DOUT, LSE, DELTA, DX, DY,
    stride_xn, stride_xl,
    stride_yn, stride_yl,
    stride_pn, stride_pr,
    stride_gn, stride_gl,
    stride_dxn, stride_dxl,
    stride_dyn, stride_dyl,
    round_index, is_first_dy, length, padding, n_chunks, d, c,
    CHUNK, K_TILES_PER_CHUNK, first_chunk, position_lo, position_hi,
    BLOCK_K: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    COMPUTE_DK: tl.constexpr,
    COMPUTE_DV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dk (normalisation backward applied, added to dX) and/or dy (added to dY) of one tile
    of key positions in [position_lo, position_hi), all in one chunk, over every query
    occurrence that sees them.

    COMPUTE_DK and COMPUTE_DV: one channel tile holds all of c (BLOCK_C >= c).
    COMPUTE_DK only: dO . y is summed over channel tiles of BLOCK_C.
    COMPUTE_DV only: program_id(2) picks the channel tile of dy.
    """
    pid_k = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    # Key tiles never straddle a chunk boundary: the queries that see a key depend on its chunk.
    chunk_index = first_chunk + pid_k // K_TILES_PER_CHUNK
    chunk_start = chunk_index * CHUNK
    tile_start = tl.maximum(chunk_start, position_lo) + (pid_k % K_TILES_PER_CHUNK) * BLOCK_K
    offs_k = tile_start + tl.arange(0, BLOCK_K)
    k_valid = (offs_k < chunk_start + CHUNK) & (offs_k < position_hi)
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < d
    offs_c = tl.arange(0, BLOCK_C)
    if COMPUTE_DV:
        offs_c += tl.program_id(2) * BLOCK_C
    c_valid = offs_c < c

    perm_round = PERM + n * stride_pn + round_index * stride_pr
    # A padded position p >= L holds the pixel of sorted position p - P.
    k_position = tl.where(offs_k >= length, offs_k - padding, offs_k)
    k_pixel = tl.load(perm_round + k_position, mask=k_valid, other=0).to(tl.int64)
    x_n = X + n * stride_xn
    v_rows = Y + n * stride_yn + k_pixel * stride_yl
    kd_mask = k_valid[:, None] & d_valid[None, :]
    kc_mask = k_valid[:, None] & c_valid[None, :]
    k = tl.load(x_n + k_pixel[:, None] * stride_xl + offs_d[None, :], mask=kd_mask, other=0.0)
    k_f32 = k.to(tl.float32)
    norm = tl.sqrt(tl.sum(k_f32 * k_f32, axis=1))
    inv_norm = 1.0 / tl.maximum(norm, KEY_NORM_EPS)
    if COMPUTE_DK and COMPUTE_DV:
        v = tl.load(v_rows[:, None] + offs_c[None, :], mask=kc_mask, other=0.0)

    dk = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_K, BLOCK_C), dtype=tl.float32)
    for t0 in range(0, 3 * CHUNK, BLOCK_Q):
        offs_t = t0 + tl.arange(0, BLOCK_Q)
        q_pixel, q_valid = query_pixels(perm_round, offs_t, chunk_index, length, n_chunks, CHUNK)
        q = tl.load(x_n + q_pixel[:, None] * stride_xl + offs_d[None, :],
                    mask=q_valid[:, None] & d_valid[None, :], other=0.0)
        do_rows = DOUT + n * stride_gn + q_pixel * stride_gl
        lse2 = tl.load(LSE + n * length + q_pixel, mask=q_valid, other=0.0) * LOG2E
        # Transposed scores (keys x queries), formed as the forward forms them.
        s2 = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * (inv_norm * LOG2E)[:, None]
        p = tl.exp2(s2 - lse2[None, :])
        p = tl.where(k_valid[:, None] & q_valid[None, :], p, 0.0)
        if COMPUTE_DV:
            do = tl.load(do_rows[:, None] + offs_c[None, :], mask=q_valid[:, None] & c_valid[None, :], other=0.0)
            dv = tl.dot(p.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        if COMPUTE_DK:
            delta = tl.load(DELTA + n * length + q_pixel, mask=q_valid, other=0.0)
            if COMPUTE_DV:
                dp = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            else:
                dp = tl.zeros((BLOCK_K, BLOCK_Q), dtype=tl.float32)
                for c0 in range(0, c, BLOCK_C):
                    ct_valid = (c0 + offs_c) < c
                    v = tl.load(v_rows[:, None] + (c0 + offs_c)[None, :],
                                mask=k_valid[:, None] & ct_valid[None, :], other=0.0)
                    do = tl.load(do_rows[:, None] + (c0 + offs_c)[None, :],
                                 mask=q_valid[:, None] & ct_valid[None, :], other=0.0)
                    dp = tl.dot(v, tl.trans(do), dp, input_precision=DOT_PRECISION)
            ds = p * (dp - delta[None, :])
            dk = tl.dot(ds.to(q.dtype), q, dk, input_precision=DOT_PRECISION)

    if COMPUTE_DK:
        # Normalisation backward, k = x / max(||x||, eps): project out k where ||x|| >= eps.
        k_hat = k_f32 * inv_norm[:, None]
        radial = tl.where(norm >= KEY_NORM_EPS, tl.sum(k_hat * dk, axis=1), 0.0)
        dx = (dk - k_hat * radial[:, None]) * inv_norm[:, None]
        dx_ptrs = DX + n * stride_dxn + k_pixel[:, None] * stride_dxl + offs_d[None, :]
        dx += tl.load(dx_ptrs, mask=kd_mask, other=0.0)
        tl.store(dx_ptrs, dx, mask=kd_mask)
    if COMPUTE_DV:
        dy_ptrs = DY + n * stride_dyn + k_pixel[:, None] * stride_dyl + offs_c[None, :]
        if is_first_dy == 0:
            dv += tl.load(dy_ptrs, mask=kc_mask, other=0.0)
        tl.store(dy_ptrs, dv, mask=kc_mask)


class BackwardConfig:
    """Tile sizes and launch options for one (chunk, d, c); chosen by the launcher, listed
    for compile tests.

    ``dq``: (constexprs, options) of ``_chunked_attention_bwd_dq_kernel``.
    ``key_passes``: a list of (constexprs, options) of ``_chunked_attention_bwd_dkdv_kernel``,
    each launched over the same key tiles: one pass computing dk and dy together when c
    fits one channel tile (c <= FUSED_C), else a dk pass (dO . y summed over channel
    tiles) and a dy pass (one program per channel tile).

    Gathered tiles carry a 64-bit pointer per element and dS needs the whole dO . y, so
    registers, not arithmetic, bound the tiles; the choices compile without spills for
    sm_80 and sm_90 on the default problems, with triton 3.6 and 3.9 (tests/test_compile.py). Without software
    pipelining (num_stages 1), which only adds register pressure to gathered loads.
    """

    FUSED_C = 64  # largest c (rounded up to a power of two) with one dk/dy pass
    C_TILE = 64  # channel tile of dO . y in the dq and dk passes when c > FUSED_C
    DV_C_TILE = 128  # channel tile of the dy pass when c > FUSED_C

    def __init__(self, chunk: int, d: int, c: int):
        self.block_d = block_d = max(16, triton.next_power_of_2(d))
        fused = triton.next_power_of_2(c) <= self.FUSED_C
        block_c = max(16, triton.next_power_of_2(c)) if fused else self.C_TILE
        options = dict(num_warps=8, num_stages=1)
        # dq: a query tile inside one chunk, key tiles over the flat 3K candidates; channel
        # tiling keeps dO reloads in flight, so it gets the smaller query tile.
        wide = block_d >= 128
        self.dq = (dict(BLOCK_Q=16 if not fused else fitting_block(chunk, (16, 32)), BLOCK_K=16 if wide else 32,
                        BLOCK_D=block_d, BLOCK_C=block_c, C_TILED=not fused), options)
        # dk/dv: a key tile inside one chunk, query tiles over the flat 3K occurrences.
        block_k = 16 if wide else fitting_block(chunk, (16, 32))
        block_q = 16 if wide else 32
        if fused:
            self.key_passes = [(dict(BLOCK_K=block_k, BLOCK_Q=block_q, BLOCK_D=block_d, BLOCK_C=block_c,
                                     COMPUTE_DK=True, COMPUTE_DV=True), options)]
        else:
            self.key_passes = [
                (dict(BLOCK_K=block_k, BLOCK_Q=block_q, BLOCK_D=block_d, BLOCK_C=block_c,
                      COMPUTE_DK=True, COMPUTE_DV=False), options),
                (dict(BLOCK_K=block_k, BLOCK_Q=block_q, BLOCK_D=block_d, BLOCK_C=self.DV_C_TILE,
                      COMPUTE_DK=False, COMPUTE_DV=True), options),
            ]


def chunked_attention_bwd(x, y, perm, out, lse, grad_out, chunk: int, padding: int, n_chunks: int):
    """Gradients (dx, dy) of ``chunked_attention_fwd`` in x's and y's dtypes.

    x: (N, L, d), y: (N, L, c), perm: (N, R, L), out and grad_out: (N, L, c), all with
    unit stride in the last dimension; lse: (N, L) fp32 contiguous, as the forward
    returns it (``out`` may also be fp32 for half inputs: delta is then exact); chunk,
    padding, n_chunks from ``chunk_layout``. Launch order (fixed, so the fp32 sums are
    deterministic): dq of every round, then per round the key positions [0, L) and the
    padded positions [L, L + P).
    """
    n, length, d = x.shape
    c = y.shape[2]
    rounds = perm.shape[1]
    f32 = torch.float32
    dx = torch.empty((n, length, d), device=x.device, dtype=f32)
    dy = torch.empty((n, length, c), device=x.device, dtype=f32)
    delta = torch.empty((n, length), device=x.device, dtype=f32)
    cfg = BackwardConfig(chunk, d, c)
    precision = dot_precision(x.dtype)

    dq_constexprs, dq_options = cfg.dq
    q_tiles = triton.cdiv(chunk, dq_constexprs["BLOCK_Q"])
    for r in range(rounds):
        _chunked_attention_bwd_dq_kernel[(n_chunks * q_tiles, n)](
            x, y, perm, out, grad_out, lse, delta, dx,
            x.stride(0), x.stride(1),
            y.stride(0), y.stride(1),
            perm.stride(0), perm.stride(1),
            out.stride(0), out.stride(1),
            grad_out.stride(0), grad_out.stride(1),
            dx.stride(0), dx.stride(1),
            r, int(r == 0), length, padding, n_chunks, d, c, chunk, q_tiles,
            DOT_PRECISION=precision,
            **dq_constexprs,
            **dq_options,
        )

    def key_launch(r, first_chunk, key_chunks, position_lo, position_hi, positions_per_chunk, is_first_dy):
        for constexprs, options in cfg.key_passes:
            tiles = triton.cdiv(positions_per_chunk, constexprs["BLOCK_K"])
            c_tiles = triton.cdiv(c, constexprs["BLOCK_C"]) if not constexprs["COMPUTE_DK"] else 1
            _chunked_attention_bwd_dkdv_kernel[(key_chunks * tiles, n, c_tiles)](
                x, y, perm, grad_out, lse, delta, dx, dy,
                x.stride(0), x.stride(1),
                y.stride(0), y.stride(1),
                perm.stride(0), perm.stride(1),
                grad_out.stride(0), grad_out.stride(1),
                dx.stride(0), dx.stride(1),
                dy.stride(0), dy.stride(1),
                r, int(is_first_dy), length, padding, n_chunks, d, c,
                chunk, tiles, first_chunk, position_lo, position_hi,
                DOT_PRECISION=precision,
                **constexprs,
                **options,
            )

    for r in range(rounds):
        # Sorted positions [0, L), tiled chunk by chunk: every pixel once. The first writes dY.
        key_launch(r, 0, n_chunks, 0, length, chunk, r == 0)
        # Padded positions [L, L + P), all in the last chunk: copies of the last P pixels.
        if padding:
            key_launch(r, n_chunks - 1, 1, length, length + padding, padding, False)

    return dx.to(x.dtype), dy.to(y.dtype)


# Problems whose launcher choices must compile without spills (Table 2's d 16 / c 64 and
# NLSN's d 64 / c 256, chunk 144), then problems that reach the remaining tile choices.
DEFAULT_PROBLEMS = ((144, 16, 64), (144, 64, 256))
OTHER_PROBLEMS = ((16, 8, 24), (1, 4, 3), (144, 12, 180), (64, 128, 16), (40, 32, 32), (144, 256, 100))

_COMMON_INT_ARGS = ("stride_xn", "stride_xl", "stride_yn", "stride_yl", "stride_pn", "stride_pr")
_DQ_INT_ARGS = _COMMON_INT_ARGS + (
    "stride_on", "stride_ol", "stride_gn", "stride_gl", "stride_dxn", "stride_dxl",
    "round_index", "is_first_round", "length", "padding", "n_chunks", "d", "c", "CHUNK", "Q_TILES_PER_CHUNK")
_DKDV_INT_ARGS = _COMMON_INT_ARGS + (
    "stride_gn", "stride_gl", "stride_dxn", "stride_dxl", "stride_dyn", "stride_dyl",
    "round_index", "is_first_dy", "length", "padding", "n_chunks", "d", "c",
    "CHUNK", "K_TILES_PER_CHUNK", "first_chunk", "position_lo", "position_hi")


def kernel_targets(cfg: BackwardConfig, dtype: torch.dtype, precision: str):
    """(kernel, arguments, options) of every launch ``cfg`` makes for one dtype and dot precision."""
    pointers = dict(X=dtype, Y=dtype, PERM=torch.int64, DOUT=dtype, LSE=torch.float32,
                    DELTA=torch.float32, DX=torch.float32)
    constexprs, options = cfg.dq
    # The forward hands the backward an fp32 output for every input dtype (see _ops).
    yield (_chunked_attention_bwd_dq_kernel,
           dict(pointers, OUT=torch.float32, **{name: "i32" for name in _DQ_INT_ARGS},
                DOT_PRECISION=precision, **constexprs), options)
    for constexprs, options in cfg.key_passes:
        yield (_chunked_attention_bwd_dkdv_kernel,
               dict(pointers, DY=torch.float32, **{name: "i32" for name in _DKDV_INT_ARGS},
                    DOT_PRECISION=precision, **constexprs), options)


def compile_targets():
    """(kernel, label, arguments, options, is_default) for every configuration the launcher can pick."""
    for problems, is_default in ((DEFAULT_PROBLEMS, True), (OTHER_PROBLEMS, False)):
        for chunk, d, c in problems:
            cfg = BackwardConfig(chunk, d, c)
            for dtype, precision in dtype_variants(is_default):
                for kernel, args, options in kernel_targets(cfg, dtype, precision):
                    shown = {k: v for k, v in args.items() if k.isupper() and not isinstance(v, (str, torch.dtype))}
                    label = f"chunk={chunk} d={d} c={c} {dtype} {precision} {shown} {options}"
                    yield kernel, label, args, options, is_default
