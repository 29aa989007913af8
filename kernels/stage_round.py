"""Staging: one round's rows gathered once into ring order (see chunk_tiles), contiguous.

A memory-bound pass per round: a program owns a block of ring rows, reads the pixel each
holds through perm, and writes its row of x (zero-padded to ``block_d``) with the key scale
1 / max(||x||, eps), its row of y (zero-padded to ``padded_c``) and a flag saying whether
that row of y holds a non-finite value. For the backward it also stages dO, lse and delta
of the same pixels. Every program writes only its own rows: no two programs of a launch
touch the same element. The buffers are reused across rounds.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk_tiles import KEY_NORM_EPS, RingLayout, TileConfig

BLOCK_ROWS = 32
COPY_WIDTH = 64


@triton.jit
def _copy_rows(src_rows, dst_rows, row_ok, width, PADDED_WIDTH: tl.constexpr, FLAG_NONFINITE: tl.constexpr,
               BLOCK_ROWS: tl.constexpr, COPY_WIDTH: tl.constexpr):
    """Copy rows [0, width) of src into rows [0, PADDED_WIDTH) of dst, zeros past width.
    Returns, per row, whether a copied value is NaN or infinite (when asked)."""
    nonfinite = tl.zeros((BLOCK_ROWS,), dtype=tl.int32)
    for c0 in tl.static_range(0, PADDED_WIDTH, COPY_WIDTH):
        cols = c0 + tl.arange(0, COPY_WIDTH)
        values = tl.load(src_rows[:, None] + cols[None, :], mask=row_ok[:, None] & (cols < width)[None, :], other=0.0)
        tl.store(dst_rows[:, None] + cols[None, :], values, mask=row_ok[:, None] & (cols < PADDED_WIDTH)[None, :])
        if FLAG_NONFINITE:
            v = values.to(tl.float32)
            bad = (v != v) | (tl.abs(v) == float("inf"))
            nonfinite = tl.maximum(nonfinite, tl.max(bad.to(tl.int32), axis=1))
    return nonfinite


@triton.jit
def _stage_round_kernel(
    X, Y, PERM, XS, YS, INV_NORM, Y_NONFINITE,
    DOUT, LSE, DELTA, DOS, LSE_S, DELTA_S,
    stride_xn, stride_xl, stride_yn, stride_yl, stride_pn, stride_pr, stride_gn, stride_gl,
    round_index, length, padding, ring_rows, d, c,
    CHUNK,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PADDED_C: tl.constexpr,
    COPY_WIDTH: tl.constexpr,
    STAGE_GRADIENTS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    n = tl.program_id(1).to(tl.int64)
    row_ok = rows < ring_rows
    padded_length = length + padding
    # Ring row e holds padded position (e - K) mod (L + P); e - K >= -K >= -(L + P).
    position = (rows - CHUNK + padded_length) % padded_length
    # A padded position p >= L holds the pixel of sorted position p - P.
    position = tl.where(position >= length, position - padding, position)
    pixel = tl.load(PERM + n * stride_pn + round_index * stride_pr + position, mask=row_ok, other=0).to(tl.int64)
    ring = n * ring_rows + rows.to(tl.int64)

    offs_d = tl.arange(0, BLOCK_D)
    x = tl.load(X + n * stride_xn + pixel[:, None] * stride_xl + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d < d)[None, :], other=0.0)
    tl.store(XS + ring[:, None] * BLOCK_D + offs_d[None, :], x, mask=row_ok[:, None])
    x_f32 = x.to(tl.float32)
    inv_norm = 1.0 / tl.maximum(tl.sqrt(tl.sum(x_f32 * x_f32, axis=1)), KEY_NORM_EPS)
    tl.store(INV_NORM + ring, inv_norm, mask=row_ok)

    y_nonfinite = _copy_rows(Y + n * stride_yn + pixel * stride_yl, YS + ring * PADDED_C, row_ok, c,
                             PADDED_C, not STAGE_GRADIENTS, BLOCK_ROWS, COPY_WIDTH)
    if STAGE_GRADIENTS:
        _copy_rows(DOUT + n * stride_gn + pixel * stride_gl, DOS + ring * PADDED_C, row_ok, c,
                   PADDED_C, False, BLOCK_ROWS, COPY_WIDTH)
        tl.store(LSE_S + ring, tl.load(LSE + n * length + pixel, mask=row_ok, other=0.0), mask=row_ok)
        tl.store(DELTA_S + ring, tl.load(DELTA + n * length + pixel, mask=row_ok, other=0.0), mask=row_ok)
    else:
        tl.store(Y_NONFINITE + ring, y_nonfinite.to(tl.int8), mask=row_ok)


class RingBuffers:
    """One round's staged rows, allocated once and reused by every round.

    xs (N, E, block_d) and ys (N, E, padded_c) in the input dtype, inv_norm (N, E) fp32,
    y_nonfinite (N, E) int8 (forward) or dos (N, E, padded_c), lse (N, E), delta (N, E)
    (backward).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, layout: RingLayout, tiles: TileConfig, gradients: bool):
        n, rows = x.shape[0], layout.rows
        self.layout, self.tiles, self.gradients = layout, tiles, gradients
        self.xs = torch.empty((n, rows, tiles.block_d), device=x.device, dtype=x.dtype)
        self.ys = torch.empty((n, rows, tiles.padded_c), device=y.device, dtype=y.dtype)
        self.inv_norm = torch.empty((n, rows), device=x.device, dtype=torch.float32)
        if gradients:
            self.dos = torch.empty((n, rows, tiles.padded_c), device=y.device, dtype=y.dtype)
            self.lse = torch.empty((n, rows), device=x.device, dtype=torch.float32)
            self.delta = torch.empty((n, rows), device=x.device, dtype=torch.float32)
            self.y_nonfinite = self.inv_norm  # unused by the backward's kernels
        else:
            self.y_nonfinite = torch.empty((n, rows), device=x.device, dtype=torch.int8)
            self.dos = self.ys
            self.lse = self.delta = self.inv_norm

    def stage(self, x, y, perm, round_index: int, grad_out=None, lse=None, delta=None) -> None:
        """Gather round ``round_index`` into the buffers (grad_out, lse, delta for the backward)."""
        layout, tiles = self.layout, self.tiles
        n = x.shape[0]
        grad_out = y if grad_out is None else grad_out
        lse = self.inv_norm if lse is None else lse
        delta = self.inv_norm if delta is None else delta
        _stage_round_kernel[(triton.cdiv(layout.rows, BLOCK_ROWS), n)](
            X=x, Y=y, PERM=perm, XS=self.xs, YS=self.ys, INV_NORM=self.inv_norm, Y_NONFINITE=self.y_nonfinite,
            DOUT=grad_out, LSE=lse, DELTA=delta, DOS=self.dos, LSE_S=self.lse, DELTA_S=self.delta,
            stride_xn=x.stride(0), stride_xl=x.stride(1), stride_yn=y.stride(0), stride_yl=y.stride(1),
            stride_pn=perm.stride(0), stride_pr=perm.stride(1),
            stride_gn=grad_out.stride(0), stride_gl=grad_out.stride(1),
            round_index=round_index, length=layout.length, padding=layout.padding, ring_rows=layout.rows,
            d=x.shape[2], c=y.shape[2], CHUNK=layout.chunk,
            BLOCK_ROWS=BLOCK_ROWS, BLOCK_D=tiles.block_d, PADDED_C=tiles.padded_c,
            COPY_WIDTH=min(COPY_WIDTH, tiles.padded_c), STAGE_GRADIENTS=self.gradients,
            num_warps=4,
        )
