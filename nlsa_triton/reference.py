"""Pure-torch Non-Local Sparse Attention, following NLSN's algorithm step by step.

Gather rows into sorted order, pad with copies of the tail, cut into chunks, attach the
two neighbouring chunks (wrapping around), softmax per round with its log-sum-exp, undo
the sort, softmax over rounds. It materialises every intermediate, as NLSN does, and is
what the Triton kernels and the torch backend (``streaming.py``) are checked against
(``backend="reference"``). Differentiable through autograd.

Deviations from NLSN, both in docs/semantics.md §9: the sort is stable (§9.1), and
L <= chunk_size is one chunk of all L positions (§9.2). Half-precision inputs are computed
in float32 and the result is cast back (PyTorch's accumulate-in-fp32 convention).

``lsh_hash``, ``chunked_attention`` and ``nlsa`` are public (``nt.reference.*``) and
validate their arguments; each is a thin wrapper over its ``*_unchecked`` twin, which
``functional`` calls with arguments it has already validated (``backend="reference"``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _validation as v
from ._autocast import autocast_inputs, autocast_off
from .chunks import chunk_layout
from .hashing import num_buckets, random_rotations, resolve_rotations
from .sorting import bucket_sort

__all__ = ["num_buckets", "random_rotations", "lsh_hash", "bucket_sort", "chunked_attention", "nlsa"]

KEY_NORM_EPS = 5e-5


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def lsh_hash(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Spherical LSH codes (N, n_hashes, L), int64 in [0, 2 * rotations.shape[2]).

    ``code_r(i) = argmax([p, -p])`` with ``p = x_i @ rotations[:, r, :]``, first maximum
    on ties. x: (N, L, d); rotations: (d, n_hashes, n_buckets // 2).
    """
    v.check_match_embedding(x)
    v.check_rotations(rotations, x.shape[2], x.device)
    return lsh_hash_unchecked(x, rotations)


def lsh_hash_unchecked(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """``lsh_hash`` of validated arguments (docs/semantics.md §2)."""
    acc = compute_dtype(x.dtype)
    projected = torch.einsum("nld,drh->nrlh", x.to(acc), rotations.to(acc))
    return torch.cat([projected, -projected], dim=-1).argmax(dim=-1)


def _gather_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t: (N, L, e), index: (N, R, M) -> (N, R, M, e) with rows t[n, index[n, r, m]]."""
    n, r, m = index.shape
    e = t.shape[-1]
    return t.unsqueeze(1).expand(n, r, t.shape[1], e).gather(2, index.unsqueeze(-1).expand(n, r, m, e))


def _with_neighbours(chunks: torch.Tensor) -> torch.Tensor:
    """(N, R, n_chunks, K, e) -> (N, R, n_chunks, 3K, e): chunk j, then j - 1, then j + 1."""
    return torch.cat([chunks, chunks.roll(1, dims=2), chunks.roll(-1, dims=2)], dim=3)


def chunked_attention_with_lse(x, y, perm, chunk_size):
    """Reference chunked attention returning (out (N, L, c), lse (N, L)) in the compute dtype.

    ``lse`` is the log-sum-exp over every round's candidates (docs/semantics.md §6.1).
    """
    n, length, _ = x.shape
    c = y.shape[2]
    rounds = perm.shape[1]
    layout = chunk_layout(length, chunk_size)
    acc = compute_dtype(x.dtype)
    x, y, index = x.to(acc), y.to(acc), perm.long()
    if layout.padding:
        index = torch.cat([index, index[:, :, length - layout.padding:]], dim=2)
    grid = (n, rounds, layout.n_chunks, layout.chunk)
    queries = _gather_rows(x, index).reshape(*grid, -1)
    values = _gather_rows(y, index).reshape(*grid, c)
    keys = F.normalize(queries, p=2, dim=-1, eps=KEY_NORM_EPS)
    scores = torch.einsum("nrcid,nrcjd->nrcij", queries, _with_neighbours(keys))
    round_lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    sorted_out = torch.einsum(
        "nrcij,nrcje->nrcie", torch.exp(scores - round_lse), _with_neighbours(values)
    )
    # Drop the padded positions (never queries) and undo the sort.
    sorted_out = sorted_out.reshape(n, rounds, -1, c)[:, :, :length]
    round_lse = round_lse.reshape(n, rounds, -1)[:, :, :length]
    unsort = perm.long()
    out_r = torch.zeros_like(sorted_out).scatter(2, unsort.unsqueeze(-1).expand_as(sorted_out), sorted_out)
    lse_r = torch.zeros_like(round_lse).scatter(2, unsort, round_lse)
    weights = torch.softmax(lse_r, dim=1)
    out = (out_r * weights.unsqueeze(-1)).sum(dim=1)
    return out, torch.logsumexp(lse_r, dim=1)


def empty_result(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The (empty) output for N = 0, L = 0 or c = 0, attached to the graph of x and y so that
    a backward through it works (and gives empty or zero gradients)."""
    return y * 0 + x.sum(dim=-1, keepdim=True) * 0


def chunked_attention(
    x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, chunk_size: int, *, check_perm: bool = True
) -> torch.Tensor:
    """Chunked softmax attention over all hash rounds (docs/semantics.md §4–§6), pure torch.

    x: (N, L, d) match embedding (queries as they are, keys L2-normalised with eps 5e-5);
    y: (N, L, c) assembly embedding; perm: (N, n_hashes, L) sorted order of each round.
    Returns (N, L, c) in x's dtype (the autocast dtype under autocast, computed in
    float32). perm's indices must lie in [0, L), and with ``check_perm`` (default) each
    row must be a permutation; these checks read perm (a host synchronisation) and are
    skipped while torch.compile traces (torch's gather still range-checks there).
    """
    x, y = autocast_inputs(x, y)
    chunk_size, perm_check = v.check_chunked_attention_args(x, y, perm, chunk_size, check_perm)
    if not torch.compiler.is_compiling():
        v.check_perm_values(perm, x.shape[1], perm_check)
    return chunked_attention_unchecked(x, y, perm, chunk_size)


def chunked_attention_unchecked(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``chunked_attention`` of validated arguments (autocast applied, perm checked)."""
    if x.shape[0] == 0 or x.shape[1] == 0 or y.shape[2] == 0:
        return empty_result(x, y)
    with autocast_off(x.device.type):
        out, _ = chunked_attention_with_lse(x, y, perm, chunk_size)
    return out.to(x.dtype)


def nlsa(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_hashes: int = 4,
    chunk_size: int = 144,
    rotations: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Non-Local Sparse Attention (docs/semantics.md §1–§6), pure torch: hash, sort, attend."""
    x, y = autocast_inputs(x, y)
    v.check_embeddings(x, y)
    rotations = resolve_rotations(x, n_hashes, chunk_size, rotations, generator)
    return nlsa_unchecked(x, y, chunk_size, rotations)


def nlsa_unchecked(x: torch.Tensor, y: torch.Tensor, chunk_size: int, rotations: torch.Tensor) -> torch.Tensor:
    """``nlsa`` of validated arguments (autocast applied, rotations resolved)."""
    if x.shape[0] == 0 or y.shape[2] == 0:
        return empty_result(x, y)
    with autocast_off(x.device.type):
        perm = bucket_sort(lsh_hash_unchecked(x, rotations))
    # perm is an argsort: a permutation by construction, so no perm check ("none").
    return chunked_attention_unchecked(x, y, perm, chunk_size)
