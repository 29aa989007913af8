"""The functional API: ``lsh_hash``, ``chunked_attention``, ``nlsa`` with a backend choice
(docs/semantics.md §8).

This is the public surface where arguments are validated, once (``_validation``); each
function then runs one backend's unchecked implementation:

- "triton": the custom ops in ``_ops`` (the kernels in ``nlsa_triton.kernels``);
- "torch": ``streaming.*_unchecked`` (the lean streamed pure-torch implementation);
- "reference": ``reference.*_unchecked`` (the step-by-step oracle).

``backend="auto"`` (default) is the Triton kernels where they run, else "torch"; see
``_backend.resolve_backend``.
"""
from __future__ import annotations

import torch

from . import _validation as v
from . import reference, streaming
from . import _ops
from ._autocast import autocast_inputs
from ._backend import resolve_backend
from .hashing import resolve_rotations


def lsh_hash(x: torch.Tensor, rotations: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Spherical LSH codes of x (N, L, d) under rotations (d, n_hashes, n_buckets // 2)
    (docs/semantics.md §2).

    Returns (N, n_hashes, L) int64 in [0, n_buckets): ``argmax([p, -p])`` of
    ``p = x @ rotations[:, r, :]``, first maximum on ties. The Triton kernel never
    writes the projections to memory.
    """
    v.check_match_embedding(x)
    v.check_rotations(rotations, x.shape[2], x.device)
    backend = resolve_backend(backend, x, uses_dot=False)
    if backend == "torch":
        return streaming.lsh_hash_unchecked(x, rotations)
    if backend == "reference":
        return reference.lsh_hash_unchecked(x, rotations)
    # Nothing differentiable flows through the hash (docs/semantics.md §2).
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
    """Chunked softmax attention over all hash rounds (docs/semantics.md §4–§6).

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
    chunk_size, perm_check = v.check_chunked_attention_args(x, y, perm, chunk_size, check_perm)
    backend = resolve_backend(backend, x)
    if backend == "triton":
        # The op runs the perm check itself, right before the kernels read through perm.
        return _ops.chunked_attention(x, y, perm, chunk_size, perm_check)
    # The pure-torch backends: skipped while torch.compile traces (torch's gather still
    # range-checks there).
    if not torch.compiler.is_compiling():
        v.check_perm_values(perm, x.shape[1], perm_check)
    if backend == "torch":
        return streaming.chunked_attention_unchecked(x, y, perm, chunk_size)
    return reference.chunked_attention_unchecked(x, y, perm, chunk_size)


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
    """Non-Local Sparse Attention (docs/semantics.md §1–§6): hash, stable sort, chunked attention.

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
        return streaming.nlsa_unchecked(x, y, chunk_size, rotations)
    if backend == "reference":
        return reference.nlsa_unchecked(x, y, chunk_size, rotations)
    # The hash and a counting sort (what bucket_sort computes): perm is a permutation by
    # construction, so no perm check.
    perm = _ops.lsh_sort(x.detach(), rotations.detach())
    return _ops.chunked_attention(x, y, perm, chunk_size, "none")
