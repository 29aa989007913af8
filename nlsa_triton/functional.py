"""The functional API: the same functions as ``nlsa_triton.reference``, with a backend choice.

``backend``: "auto" (default: the Triton kernels where they run, else "torch"), "triton",
"torch" (``nlsa_triton.streaming``) or "reference" (``nlsa_triton.reference``); see
``nlsa_triton._backend``.
"""
from __future__ import annotations

import torch

from . import _validation as v
from . import reference, streaming
from . import _ops
from ._backend import autocast_inputs, resolve_backend
from .buckets import bucket_sort, resolve_rotations


def lsh_hash(x: torch.Tensor, rotations: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Spherical LSH codes of x (N, L, d) under rotations (d, n_hashes, n_buckets // 2).

    Returns (N, n_hashes, L) int64 in [0, n_buckets): ``argmax([p, -p])`` of
    ``p = x @ rotations[:, r, :]``, first maximum on ties. The Triton kernel never
    writes the projections to memory.
    """
    v.check_match_embedding(x)
    v.check_rotations(rotations, x.shape[2], x.device)
    backend = resolve_backend(backend, x, uses_dot=False)
    if backend == "torch":
        return streaming.lsh_hash(x, rotations)
    if backend == "reference":
        return reference.lsh_hash(x, rotations)
    # Nothing differentiable flows through the hash (spec section 2).
    return _ops.lsh_hash(x.detach(), rotations.detach())


def chunked_attention(
    x: torch.Tensor,
    y: torch.Tensor,
    perm: torch.Tensor,
    chunk_size: int,
    *,
    backend: str = "auto",
    check_perm: bool = True,
) -> torch.Tensor:
    """Chunked softmax attention over all hash rounds (spec sections 4-6).

    x: (N, L, d) match embedding: queries as they are, keys L2-normalised (eps 5e-5);
    y: (N, L, c) assembly embedding; perm: (N, n_hashes, L) int32/int64, the sorted
    order of each round (``bucket_sort``). Query at sorted position p attends to every
    position of its chunk and the two neighbouring chunks (wrapping around); the rounds
    combine as one softmax over all their candidates. Returns (N, L, c) in x's dtype
    (the autocast dtype under autocast).

    perm is read before any kernel runs: every index must lie in [0, L) (always checked:
    the kernels read rows of x and y through it), and with ``check_perm=True`` (default)
    every row must be a permutation of range(L). Both cost one pass over perm and one
    host synchronisation; ``check_perm=False`` skips the permutation part (for perms you
    know are permutations); a perm with repeated indices then gives an undefined output.
    """
    x, y = autocast_inputs(x, y)
    v.check_embeddings(x, y)
    chunk_size = v.check_positive_int(chunk_size, "chunk_size")
    v.check_perm(perm, x.shape[0], x.shape[1], x.device)
    perm_check = v.check_perm_mode(check_perm)
    backend = resolve_backend(backend, x)
    if backend == "torch":
        return streaming.chunked_attention(x, y, perm, chunk_size, check_perm=check_perm)
    if backend == "reference":
        return reference.chunked_attention(x, y, perm, chunk_size, check_perm=check_perm)
    return _ops.chunked_attention(x, y, perm, chunk_size, perm_check)


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
    fixes the hash; otherwise fresh ones are drawn, from ``generator`` when given (else
    from torch's global generator). Returns (N, L, c) in x's dtype (the autocast dtype
    under autocast); differentiable in x and y.
    """
    x, y = autocast_inputs(x, y)
    v.check_embeddings(x, y)
    backend = resolve_backend(backend, x)
    rotations = resolve_rotations(x, n_hashes, chunk_size, rotations, generator)
    if backend == "torch":
        return streaming.nlsa(x, y, n_hashes=n_hashes, chunk_size=chunk_size, rotations=rotations)
    if backend == "reference":
        return reference.nlsa(x, y, n_hashes=n_hashes, chunk_size=chunk_size, rotations=rotations)
    # bucket_sort is an argsort: perm is a permutation by construction, nothing to check.
    perm = bucket_sort(_ops.lsh_hash(x.detach(), rotations.detach()))
    return _ops.chunked_attention(x, y, perm, chunk_size, "none")
