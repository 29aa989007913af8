"""Forward kernel of chunked attention across all hash rounds (spec sections 4-6).

One launch per hash round; a program owns a tile of query positions in one chunk and
one tile of value channels. It reads rows of x and y in place through perm (no sorted
or tripled copies), normalises keys on the fly, and runs the softmax over the 3K
candidates with fp32 accumulators.

Rounds are combined without one output per round: the row maximum of every round is
m_i = ||x_i|| (Cauchy-Schwarz, and the self key reaches it), so the unnormalised sums
exp(s - m) y and exp(s - m) simply add up across rounds, in an fp32 buffer indexed by
pixel. Within a round every pixel is the query of exactly one program, so the
read-modify-write needs no atomics, and round order is fixed: the result is
deterministic. The last round divides and writes the output and the log-sum-exp.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk_tiles import LOG2E, candidate_keys, dtype_variants, fitting_block


@triton.jit
def _chunked_attention_fwd_kernel(
    X, Y, PERM, ACC, ROW_SUM, OUT, LSE,
    stride_xn, stride_xl,
    stride_yn, stride_yl,
    stride_pn, stride_pr,
    stride_an, stride_al,
    stride_on, stride_ol,
    round_index, is_first_round, is_last_round, store_fp32_out, length, padding, n_chunks, d, c,
    CHUNK, Q_TILES_PER_CHUNK,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_q = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    pid_c = tl.program_id(2)
    chunk_index = pid_q // Q_TILES_PER_CHUNK
    chunk_start = chunk_index * CHUNK
    offs_q = chunk_start + (pid_q % Q_TILES_PER_CHUNK) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    # Padded positions (>= L) are keys only, never queries.
    q_valid = (offs_q < chunk_start + CHUNK) & (offs_q < length)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    d_valid = offs_d < d
    c_valid = offs_c < c

    perm_round = PERM + n * stride_pn + round_index * stride_pr
    q_pixel = tl.load(perm_round + offs_q, mask=q_valid, other=0).to(tl.int64)
    x_n = X + n * stride_xn
    y_n = Y + n * stride_yn
    q = tl.load(x_n + q_pixel[:, None] * stride_xl + offs_d[None, :],
                mask=q_valid[:, None] & d_valid[None, :], other=0.0)
    q_f32 = q.to(tl.float32)
    # Row maximum of every round, in log2 units.
    m2 = tl.sqrt(tl.sum(q_f32 * q_f32, axis=1)) * LOG2E

    acc = tl.zeros((BLOCK_Q, BLOCK_C), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    for t0 in range(0, 3 * CHUNK, BLOCK_K):
        offs_t = t0 + tl.arange(0, BLOCK_K)
        k, inv_norm, k_pixel, k_valid = candidate_keys(
            x_n, stride_xl, perm_round, offs_t, chunk_index, length, padding, n_chunks, CHUNK, offs_d, d_valid)
        s2 = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * (inv_norm * LOG2E)[None, :]
        p = tl.exp2(s2 - m2[:, None])
        p = tl.where(k_valid[None, :], p, 0.0)
        row_sum += tl.sum(p, axis=1)
        v = tl.load(y_n + k_pixel[:, None] * stride_yl + offs_c[None, :],
                    mask=k_valid[:, None] & c_valid[None, :], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)

    acc_ptrs = ACC + n * stride_an + q_pixel[:, None] * stride_al + offs_c[None, :]
    acc_mask = q_valid[:, None] & c_valid[None, :]
    row_sum_ptrs = ROW_SUM + n * length + q_pixel
    if is_first_round == 0:
        acc += tl.load(acc_ptrs, mask=acc_mask, other=0.0)
        row_sum += tl.load(row_sum_ptrs, mask=q_valid, other=1.0)
    if is_last_round != 0:
        out = acc / row_sum[:, None]
        out_ptrs = OUT + n * stride_on + q_pixel[:, None] * stride_ol + offs_c[None, :]
        tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=acc_mask)
        if store_fp32_out != 0:
            tl.store(acc_ptrs, out, mask=acc_mask)
        if pid_c == 0:
            lse = (m2 + tl.log2(row_sum)) / LOG2E
            tl.store(LSE + n * length + q_pixel, lse, mask=q_valid)
    else:
        tl.store(acc_ptrs, acc, mask=acc_mask)
        # Every channel tile computes the same row sums; one of them keeps them.
        if pid_c == 0:
            tl.store(row_sum_ptrs, row_sum, mask=q_valid)


class ForwardConfig:
    """Tile sizes for one (chunk, d, c); chosen by the launcher, listed for compile tests.

    Gathered tiles carry one 64-bit pointer per element, so registers run out long before
    the arithmetic does: wider rows (d) get fewer keys per tile, and 8 warps share the
    load. Every channel tile recomputes the scores, so for d <= 64 and c > 64 one
    128-wide channel tile over 16 queries beats two 64-wide ones over 32. The choices
    compile without spills for sm_80 and sm_90 with triton 3.6 and 3.9
    (tests/test_compile.py).
    """

    def __init__(self, chunk: int, d: int, c: int):
        self.block_d = max(16, triton.next_power_of_2(d))
        self.block_k = 64 if self.block_d <= 16 else 32 if self.block_d <= 64 else 16
        if 16 < self.block_d <= 64 and c > 64:
            self.block_q = 16
            self.block_c = fitting_block(c, (64, 128))
        else:
            self.block_q = fitting_block(chunk, (16, 32))
            self.block_c = fitting_block(c, (16, 32, 64))
        self.num_warps = 8

    def as_constexprs(self) -> dict:
        return dict(BLOCK_Q=self.block_q, BLOCK_K=self.block_k, BLOCK_D=self.block_d, BLOCK_C=self.block_c)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 products follow torch.backends.cuda.matmul.allow_tf32, as torch matmuls do."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def chunked_attention_fwd(x, y, perm, chunk: int, padding: int, n_chunks: int, keep_fp32_out: bool = False):
    """Launch the forward over every round. Returns (out (N, L, c) in x.dtype, lse (N, L) fp32,
    out_fp32).

    ``out_fp32`` is the output before rounding to a half dtype, kept when asked for
    (else None; for fp32 it is ``out`` itself): the backward's delta = rowsum(dO * out)
    cancels against the self key's term when the softmax is peaked, and the rounding of
    a half-precision ``out`` would dominate the gradient.

    x: (N, L, d), y: (N, L, c) with unit stride in the last dimension; perm: (N, R, L)
    int32/int64 with unit stride in the last dimension; chunk, padding, n_chunks from
    ``chunk_layout``. Extra memory: the output, an fp32 accumulator of the same shape
    for half-precision outputs, and two (N, L) fp32 vectors.
    """
    n, length, d = x.shape
    c = y.shape[2]
    rounds = perm.shape[1]
    out = torch.empty_like(y)
    lse = torch.empty((n, length), device=x.device, dtype=torch.float32)
    acc = out if out.dtype == torch.float32 else torch.empty(y.shape, device=y.device, dtype=torch.float32)
    row_sum = torch.empty((n, length), device=x.device, dtype=torch.float32) if rounds > 1 else lse
    cfg = ForwardConfig(chunk, d, c)
    q_tiles = triton.cdiv(chunk, cfg.block_q)
    grid = (n_chunks * q_tiles, n, triton.cdiv(c, cfg.block_c))
    for r in range(rounds):
        _chunked_attention_fwd_kernel[grid](
            x, y, perm, acc, row_sum, out, lse,
            x.stride(0), x.stride(1),
            y.stride(0), y.stride(1),
            perm.stride(0), perm.stride(1),
            acc.stride(0), acc.stride(1),
            out.stride(0), out.stride(1),
            r, int(r == 0), int(r == rounds - 1), int(keep_fp32_out and acc is not out),
            length, padding, n_chunks, d, c, chunk, q_tiles,
            DOT_PRECISION=dot_precision(x.dtype),
            num_warps=cfg.num_warps,
            **cfg.as_constexprs(),
        )
    return out, lse, (acc if keep_fp32_out else None)


# Problems whose launcher choices must compile without spills (Table 2's d 16 / c 64 and
# NLSN's d 64 / c 256, chunk 144), then problems that reach the remaining tile choices.
DEFAULT_PROBLEMS = ((144, 16, 64), (144, 64, 256))
OTHER_PROBLEMS = ((16, 8, 24), (1, 4, 3), (144, 12, 180), (64, 128, 100), (40, 32, 32), (144, 256, 16))


def compile_targets():
    """(kernel, label, arguments, options, is_default) for every configuration the launcher can pick."""
    for problems, is_default in ((DEFAULT_PROBLEMS, True), (OTHER_PROBLEMS, False)):
        for chunk, d, c in problems:
            cfg = ForwardConfig(chunk, d, c)
            for dtype, precision in dtype_variants(is_default):
                args = dict(
                    X=dtype, Y=dtype, PERM=torch.int64, ACC=torch.float32, ROW_SUM=torch.float32,
                    OUT=dtype, LSE=torch.float32, **{name: "i32" for name in _INT_ARGS},
                    DOT_PRECISION=precision, **cfg.as_constexprs(),
                )
                label = f"chunk={chunk} d={d} c={c} {dtype} {precision} {cfg.as_constexprs()}"
                yield _chunked_attention_fwd_kernel, label, args, {"num_warps": cfg.num_warps}, is_default

_INT_ARGS = ("stride_xn", "stride_xl", "stride_yn", "stride_yl", "stride_pn", "stride_pr", "stride_an",
             "stride_al", "stride_on", "stride_ol", "round_index", "is_first_round", "is_last_round", "store_fp32_out", "length", "padding", "n_chunks", "d", "c",
             "CHUNK", "Q_TILES_PER_CHUNK")
