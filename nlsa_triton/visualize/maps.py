"""Attention maps of Non-Local Sparse Attention for one query pixel (Figure 1 of the NLSN
supplementary material).

NLSN's supplementary material (section 3, Figure 1) shows, for a chosen point of an
image, the correlation map of each hash round and of the combined attention. This
module computes exactly those weights, with the same hash, sort and chunk layout as
``nlsa`` (``hashing.resolve_rotations``, the reference's hash, ``sorting.bucket_sort``,
``chunks.chunk_layout``), so that for the same rotations

    sum_j maps[n, n_hashes, j] * y[n, j] == nlsa(x, y, rotations=rotations)[n, query_index]

(the combined row holds the weights nlsa's output for that query is formed with).
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from .. import _validation as v
from ..chunks import chunk_layout
from ..hashing import resolve_rotations
from ..reference import KEY_NORM_EPS, compute_dtype, lsh_hash_unchecked
from ..sorting import bucket_sort

__all__ = ["attention_maps"]


def _check_query_index(query_index, length: int) -> int:
    if isinstance(query_index, bool) or not isinstance(query_index, numbers.Integral):
        raise TypeError(
            f"query_index must be an int in [0, L) (a flat pixel index h * W + w), got "
            f"{type(query_index).__name__} {query_index!r}"
        )
    if not 0 <= query_index < length:
        raise ValueError(f"query_index must be in [0, L) = [0, {length}), got {query_index}")
    return int(query_index)


def attention_maps(
    x: torch.Tensor,
    query_index: int,
    *,
    n_hashes: int = 4,
    chunk_size: int = 144,
    rotations: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """NLSA's attention weights for one query pixel: (N, n_hashes + 1, L).

    x: (N, L, d) match embedding (as given to ``nlsa``); query_index: the query's flat
    pixel index in [0, L). Row r < n_hashes is round r's softmax over the query's 3K
    candidates (its chunk and the two neighbouring chunks of the round's sorted order),
    spread back onto the pixels: a pixel that is a candidate more than once (padding
    copies, or the same chunk counted twice when there are one or two chunks) gets the
    sum of its weights. Each such row sums to 1. The last row is the combined map,
    ``sum_r softmax_r(lse_r) * row_r``: the weights of the one softmax over all rounds'
    candidates with which ``nlsa`` forms the query's output (docs/semantics.md §6.1); it also
    sums to 1.

    The hash is nlsa's: the caller's ``rotations`` (d, n_hashes, n_buckets // 2), or
    fresh ones from ``generator``. Pass the same rotations to ``nlsa`` to get the output
    these maps describe. Computed in float32 (float64 for float64 x); the result is in
    that dtype.
    """
    v.check_match_embedding(x)
    n, length, _ = x.shape
    query_index = _check_query_index(query_index, length)
    rotations = resolve_rotations(x, n_hashes, chunk_size, rotations, generator)
    rounds = rotations.shape[1]
    acc = compute_dtype(x.dtype)
    if n == 0:
        return torch.zeros((0, rounds + 1, length), dtype=acc, device=x.device)

    perm = bucket_sort(lsh_hash_unchecked(x, rotations))  # (N, R, L)
    chunk, padding, n_chunks = chunk_layout(length, chunk_size)

    # The query's sorted position and chunk in each round.
    position = (perm == query_index).to(torch.int8).argmax(dim=-1)  # (N, R)
    own = position // chunk
    starts = torch.stack([own, (own - 1) % n_chunks, (own + 1) % n_chunks], dim=-1) * chunk
    padded = (starts.unsqueeze(-1) + torch.arange(chunk, device=x.device)).flatten(2)  # (N, R, 3K)
    # A padded position p >= L holds the pixel of sorted position p - P.
    sorted_pos = torch.where(padded >= length, padded - padding, padded)
    pixels = perm.gather(2, sorted_pos)  # (N, R, 3K) candidate pixels, duplicates kept

    xa = x.to(acc)
    keys = F.normalize(xa, p=2, dim=-1, eps=KEY_NORM_EPS)
    scores_all = torch.einsum("nld,nd->nl", keys, xa[:, query_index])  # (N, L)
    scores = scores_all.gather(1, pixels.flatten(1)).view_as(pixels)
    lse = torch.logsumexp(scores, dim=-1)  # (N, R)
    weights = torch.exp(scores - lse.unsqueeze(-1))
    maps = torch.zeros((n, rounds, length), dtype=acc, device=x.device).scatter_add(2, pixels, weights)
    combined = (torch.softmax(lse, dim=1).unsqueeze(-1) * maps).sum(dim=1, keepdim=True)
    return torch.cat([maps, combined], dim=1)
