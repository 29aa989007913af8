"""Staging: a group of rounds' rows gathered once into ring order (see chunk_tiles), contiguous.

A memory-bound pass per group of rounds, one launch: a program owns a block of ring rows of
one (round, image) pair, reads the pixel each holds through perm, and writes its row of x
(zero-padded to ``block_d``) with the key scale 1 / max(||x||, eps), its row of y
(zero-padded to ``padded_c``) and a flag saying whether that row of y holds a non-finite
value. For the backward it also stages dO, lse and delta = dO . out of the same pixels
(no (N, L, c) temporary for delta) and the sorted position of every pixel. x, y and dO
are read through all their strides (the module's convolutions give channel-major views,
which are not copied). Every program writes only its own rows: no two programs of a
launch touch the same element. The buffers are reused across groups.

The ring buffers of a group are indexed by ``b = g * N + n`` for round ``first_round + g``
of image n: rows [b E, (b + 1) E) (E ring rows per round and image).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk_tiles import KEY_NORM_EPS, RingLayout, TileConfig

BLOCK_ROWS = 32
COPY_WIDTH = 64


@triton.jit
def _copy_rows(src_rows, src_stride, dst_rows, row_ok, width, dot_rows, dot_stride, PADDED_WIDTH: tl.constexpr,
               FLAG_NONFINITE: tl.constexpr, DOT: tl.constexpr, BLOCK_ROWS: tl.constexpr,
               COPY_WIDTH: tl.constexpr):
    """Copy columns [0, width) of the src rows (columns ``src_stride`` apart) into columns
    [0, PADDED_WIDTH) of the dst rows, zeros past width. Returns, per row, whether a copied
    value is NaN or infinite (when asked) and, with DOT, the fp32 dot product of the row
    with the row of ``dot_rows`` (columns ``dot_stride`` apart)."""
    nonfinite = tl.zeros((BLOCK_ROWS,), dtype=tl.int32)
    dot = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    for c0 in tl.static_range(0, PADDED_WIDTH, COPY_WIDTH):
        cols = c0 + tl.arange(0, COPY_WIDTH)
        in_width = row_ok[:, None] & (cols < width)[None, :]
        values = tl.load(src_rows[:, None] + cols[None, :].to(tl.int64) * src_stride, mask=in_width, other=0.0)
        tl.store(dst_rows[:, None] + cols[None, :], values, mask=row_ok[:, None] & (cols < PADDED_WIDTH)[None, :])
        if FLAG_NONFINITE:
            v = values.to(tl.float32)
            bad = (v != v) | (tl.abs(v) == float("inf"))
            nonfinite = tl.maximum(nonfinite, tl.max(bad.to(tl.int32), axis=1))
        if DOT:
            other = tl.load(dot_rows[:, None] + cols[None, :].to(tl.int64) * dot_stride, mask=in_width, other=0.0)
            dot += tl.sum(values.to(tl.float32) * other.to(tl.float32), axis=1)
    return nonfinite, dot


@triton.jit
def _stage_round_kernel(
    X, Y, PERM, XS, YS, INV_NORM, Y_NONFINITE,
    DOUT, OUT, LSE, DOS, LSE_S, DELTA_S, INVERSE,
    stride_xn, stride_xl, stride_xd, stride_yn, stride_yl, stride_yc, stride_pn, stride_pr,
    stride_gn, stride_gl, stride_gc, stride_on, stride_ol, stride_oc,
    first_round, images, length, padding, ring_rows, d, c,
    CHUNK,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PADDED_C: tl.constexpr,
    COPY_WIDTH: tl.constexpr,
    STAGE_GRADIENTS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    b = tl.program_id(1).to(tl.int64)  # g * N + n
    n = (tl.program_id(1) % images).to(tl.int64)  # 32-bit division: no subroutine call
    round_index = first_round + tl.program_id(1) // images
    row_ok = rows < ring_rows
    padded_length = length + padding
    # Ring row e holds padded position (e - K) mod (L + P); e - K >= -K >= -(L + P).
    position = (rows - CHUNK + padded_length) % padded_length
    # A padded position p >= L holds the pixel of sorted position p - P.
    position = tl.where(position >= length, position - padding, position)
    pixel = tl.load(PERM + n * stride_pn + round_index * stride_pr + position, mask=row_ok, other=0).to(tl.int64)
    ring = b * ring_rows + rows.to(tl.int64)

    offs_d = tl.arange(0, BLOCK_D)
    x = tl.load(X + n * stride_xn + pixel[:, None] * stride_xl + offs_d[None, :] * stride_xd,
                mask=row_ok[:, None] & (offs_d < d)[None, :], other=0.0)
    tl.store(XS + ring[:, None] * BLOCK_D + offs_d[None, :], x, mask=row_ok[:, None])
    x_f32 = x.to(tl.float32)
    inv_norm = 1.0 / tl.maximum(tl.sqrt(tl.sum(x_f32 * x_f32, axis=1)), KEY_NORM_EPS)
    tl.store(INV_NORM + ring, inv_norm, mask=row_ok)

    y_nonfinite, _ = _copy_rows(Y + n * stride_yn + pixel * stride_yl, stride_yc, YS + ring * PADDED_C, row_ok, c,
                                Y, 0, PADDED_C, not STAGE_GRADIENTS, False, BLOCK_ROWS, COPY_WIDTH)
    if STAGE_GRADIENTS:
        # delta = dO . out of the row's pixel, in fp32, while dO is copied.
        _, delta = _copy_rows(DOUT + n * stride_gn + pixel * stride_gl, stride_gc, DOS + ring * PADDED_C, row_ok, c,
                              OUT + n * stride_on + pixel * stride_ol, stride_oc, PADDED_C, False, True,
                              BLOCK_ROWS, COPY_WIDTH)
        tl.store(LSE_S + ring, tl.load(LSE + n * length + pixel, mask=row_ok, other=0.0), mask=row_ok)
        tl.store(DELTA_S + ring, delta, mask=row_ok)
        # The sorted position of each pixel, from the ring rows of positions [0, L).
        own = row_ok & (rows >= CHUNK) & (rows < CHUNK + length)
        tl.store(INVERSE + b * length + pixel, rows - CHUNK, mask=own)
    else:
        tl.store(Y_NONFINITE + ring, y_nonfinite.to(tl.int8), mask=row_ok)


class RingBuffers:
    """The staged rows of a group of ``rounds`` rounds, allocated once and reused by every group.

    xs (G N, E, block_d) and ys (G N, E, padded_c) in the input dtype, inv_norm (G N, E)
    fp32, y_nonfinite (G N, E) int8 (forward) or dos (G N, E, padded_c), lse (G N, E),
    delta (G N, E) fp32 and inverse (G N, L) int32, the sorted position of every pixel
    (backward).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, layout: RingLayout, tiles: TileConfig, gradients: bool,
                 rounds: int = 1):
        n, rows = rounds * x.shape[0], layout.rows
        self.layout, self.tiles, self.gradients = layout, tiles, gradients
        self.xs = torch.empty((n, rows, tiles.block_d), device=x.device, dtype=x.dtype)
        self.ys = torch.empty((n, rows, tiles.padded_c), device=y.device, dtype=y.dtype)
        self.inv_norm = torch.empty((n, rows), device=x.device, dtype=torch.float32)
        if gradients:
            self.dos = torch.empty((n, rows, tiles.padded_c), device=y.device, dtype=y.dtype)
            self.lse = torch.empty((n, rows), device=x.device, dtype=torch.float32)
            self.delta = torch.empty((n, rows), device=x.device, dtype=torch.float32)
            self.inverse = torch.empty((n, layout.length), device=x.device, dtype=torch.int32)
            self.y_nonfinite = self.inv_norm  # unused by the backward's kernels
        else:
            self.y_nonfinite = torch.empty((n, rows), device=x.device, dtype=torch.int8)
            self.dos = self.ys
            self.lse = self.delta = self.inv_norm
            self.inverse = self.y_nonfinite  # unused by the forward's kernels

    @staticmethod
    def bytes_per_round(x: torch.Tensor, y: torch.Tensor, layout: RingLayout, tiles: TileConfig,
                        gradients: bool) -> int:
        """Bytes the buffers take per round of a group."""
        rows = x.shape[0] * layout.rows
        widths = tiles.block_d * x.element_size() + tiles.padded_c * y.element_size() * (2 if gradients else 1)
        return rows * (widths + 4 + (8 if gradients else 1)) + (x.shape[0] * layout.length * 4 if gradients else 0)

    def stage(self, x, y, perm, first_round: int, rounds: int, grad_out=None, out=None, lse=None) -> None:
        """Gather rounds [first_round, first_round + rounds) into the buffers (grad_out, the
        forward's out and lse for the backward)."""
        layout, tiles = self.layout, self.tiles
        n = x.shape[0]
        grad_out = y if grad_out is None else grad_out
        out = y if out is None else out
        lse = self.inv_norm if lse is None else lse
        _stage_round_kernel[(triton.cdiv(layout.rows, BLOCK_ROWS), n * rounds)](
            X=x, Y=y, PERM=perm, XS=self.xs, YS=self.ys, INV_NORM=self.inv_norm, Y_NONFINITE=self.y_nonfinite,
            DOUT=grad_out, OUT=out, LSE=lse, DOS=self.dos, LSE_S=self.lse, DELTA_S=self.delta, INVERSE=self.inverse,
            stride_xn=x.stride(0), stride_xl=x.stride(1), stride_xd=x.stride(2),
            stride_yn=y.stride(0), stride_yl=y.stride(1), stride_yc=y.stride(2),
            stride_pn=perm.stride(0), stride_pr=perm.stride(1),
            stride_gn=grad_out.stride(0), stride_gl=grad_out.stride(1), stride_gc=grad_out.stride(2),
            stride_on=out.stride(0), stride_ol=out.stride(1), stride_oc=out.stride(2),
            first_round=first_round, images=n, length=layout.length, padding=layout.padding, ring_rows=layout.rows,
            d=x.shape[2], c=y.shape[2], CHUNK=layout.chunk,
            BLOCK_ROWS=BLOCK_ROWS, BLOCK_D=tiles.block_d, PADDED_C=tiles.padded_c,
            COPY_WIDTH=min(COPY_WIDTH, tiles.padded_c), STAGE_GRADIENTS=self.gradients,
            num_warps=4,
        )
