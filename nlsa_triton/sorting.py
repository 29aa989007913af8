"""The sort: hash codes to the sorted order of each round (docs/semantics.md §3)."""
from __future__ import annotations

import torch


def bucket_sort(codes: torch.Tensor) -> torch.Tensor:
    """Stable argsort of hash codes along the last axis: (N, n_hashes, L) -> perm, int64.

    ``perm[n, r, p]`` is the pixel at sorted position p of round r. Equal codes keep
    their original order, so the result is deterministic (NLSN's unstable sort gives one
    of the orders this may give; docs/semantics.md §9.1).

    ``nlsa``'s Triton path computes the same permutation (as int32) without this function:
    the hash kernel writes one-byte codes and per-block bucket counts, and a counting sort
    kernel places every position (``_ops.lsh_sort``, two launches).
    """
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor of shape (N, n_hashes, L), got {type(codes).__name__}")
    if codes.dim() != 3:
        raise ValueError(f"codes must have shape (N, n_hashes, L) (rank 3), got shape {tuple(codes.shape)}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    return torch.argsort(codes, dim=-1, stable=True)
