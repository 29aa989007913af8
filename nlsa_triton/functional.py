"""The functional API: the same functions as ``nlsa_triton.reference``, with a backend choice."""
from __future__ import annotations

import torch

from . import _validation as v
from . import reference
from ._backend import resolve_backend
from .buckets import bucket_sort, chunk_layout, resolve_rotations
from .kernels import chunked_attention_fwd, lsh_hash_triton

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class ChunkedAttentionFunction(torch.autograd.Function):
    """Triton chunked attention across all hash rounds; saves x, y, perm, out and lse."""

    @staticmethod
    def forward(ctx, x, y, perm, chunk_size):
        layout = chunk_layout(x.shape[1], chunk_size)
        out, lse = chunked_attention_fwd(x, y, perm, *layout)
        ctx.save_for_backward(x, y, perm, out, lse)
        ctx.layout = layout
        return out

    @staticmethod
    def backward(ctx, grad_out):
        raise NotImplementedError(
            "the backward of chunked_attention on the Triton backend is not implemented yet; "
            "use backend='torch' to train"
        )


def lsh_hash(x: torch.Tensor, rotations: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Spherical LSH codes of x (N, L, d) under rotations (d, n_hashes, n_buckets // 2).

    Returns (N, n_hashes, L) int64 in [0, n_buckets): ``argmax([p, -p])`` of
    ``p = x @ rotations[:, r, :]``, first maximum on ties. The Triton kernel never
    writes the projections to memory.
    """
    v.check_float_tensor(x, "x", 3, "(N, L, d)")
    v.check_rotations(rotations, x.shape[2], x.device)
    if resolve_backend(backend, x) == "torch":
        return reference.lsh_hash(x, rotations)
    return lsh_hash_triton(_unit_last_stride(x), rotations.contiguous())


def chunked_attention(
    x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, chunk_size: int, *, backend: str = "auto"
) -> torch.Tensor:
    """Chunked softmax attention over all hash rounds (spec sections 4-6).

    x: (N, L, d) match embedding: queries as they are, keys L2-normalised (eps 5e-5);
    y: (N, L, c) assembly embedding; perm: (N, n_hashes, L) int32/int64, the sorted
    order of each round (``bucket_sort``). Query at sorted position p attends to every
    position of its chunk and the two neighbouring chunks (wrapping around); the rounds
    combine as one softmax over all their candidates. Returns (N, L, c) in x's dtype.
    """
    v.check_embeddings(x, y)
    chunk_size = v.check_positive_int(chunk_size, "chunk_size")
    v.check_perm(perm, x.shape[0], x.shape[1], x.device)
    if resolve_backend(backend, x) == "torch":
        return reference.chunked_attention(x, y, perm, chunk_size)
    if x.dtype not in TRITON_DTYPES:
        raise TypeError(
            f"backend='triton' takes float16, bfloat16 or float32 x and y, got {x.dtype}; "
            "use backend='torch' for float64"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        return y.new_zeros(y.shape)
    return ChunkedAttentionFunction.apply(
        _unit_last_stride(x), _unit_last_stride(y), _unit_last_stride(perm), chunk_size
    )


def nlsa(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_hashes: int = 4,
    chunk_size: int = 144,
    rotations: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Non-Local Sparse Attention (spec sections 1-6): hash, stable sort, chunked attention.

    x: (N, L, d), y: (N, L, c). ``rotations`` (d, n_hashes, num_buckets(L, chunk_size) // 2)
    fixes the hash; otherwise fresh ones are drawn, from ``generator`` when given.
    Returns (N, L, c) in x's dtype; differentiable in x and y.
    """
    v.check_embeddings(x, y)
    rotations = resolve_rotations(x, n_hashes, chunk_size, rotations, generator)
    if resolve_backend(backend, x) == "torch":
        return reference.nlsa(x, y, n_hashes=n_hashes, chunk_size=chunk_size, rotations=rotations)
    perm = bucket_sort(lsh_hash(x, rotations, backend="triton"))
    return chunked_attention(x, y, perm, chunk_size, backend="triton")
