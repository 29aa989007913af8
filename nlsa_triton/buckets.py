"""Hash-bucket bookkeeping shared by both backends: bucket count, chunk layout, rotations, sort."""
from __future__ import annotations

from typing import NamedTuple

import torch

from ._validation import check_positive_int, check_rotations

MAX_BUCKETS = 128


class ChunkLayout(NamedTuple):
    """How L sorted positions are cut into chunks (spec section 4).

    chunk: effective chunk size (L itself when L <= chunk_size: one chunk, no padding).
    padding: P, the number of copies of the last sorted positions appended.
    n_chunks: (L + P) // chunk.
    """

    chunk: int
    padding: int
    n_chunks: int


def chunk_layout(length: int, chunk_size: int) -> ChunkLayout:
    chunk = min(chunk_size, length)
    padding = (chunk - length % chunk) % chunk
    return ChunkLayout(chunk, padding, (length + padding) // chunk)


def num_buckets(length: int, chunk_size: int) -> int:
    """Number of hash buckets B for L = ``length`` pixels (spec section 1).

    ``L // chunk_size`` rounded up to even, at most 128. NLSN breaks when L < chunk_size
    (B = 0); here L <= chunk_size means one chunk holding every position, where hashing
    cannot change the result, and B = 2 keeps the shapes valid.
    """
    length = check_positive_int(length, "L")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if length <= chunk_size:
        return 2
    n = length // chunk_size
    return min(n + n % 2, MAX_BUCKETS)


def random_rotations(
    d: int,
    n_hashes: int,
    n_buckets: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard-normal rotations of shape (d, n_hashes, n_buckets // 2) for spherical LSH.

    NLSN draws a fresh tensor on every forward; passing ``generator`` (or keeping the
    returned tensor) makes a call reproducible. ``dtype`` defaults to float32.
    """
    d = check_positive_int(d, "d")
    n_hashes = check_positive_int(n_hashes, "n_hashes")
    n_buckets = check_positive_int(n_buckets, "n_buckets")
    if n_buckets % 2:
        raise ValueError(f"n_buckets must be even (codes are argmax over [p, -p]), got {n_buckets}")
    if generator is not None and device is None:
        device = generator.device
    return torch.randn(
        (d, n_hashes, n_buckets // 2),
        generator=generator,
        device=device,
        dtype=dtype or torch.float32,
    )


def bucket_sort(codes: torch.Tensor) -> torch.Tensor:
    """Stable argsort of hash codes along the last axis: (N, n_hashes, L) -> perm, int64.

    ``perm[n, r, p]`` is the pixel at sorted position p of round r. Equal codes keep
    their original order, so the result is deterministic (NLSN's unstable sort gives one
    of the orders this may give).
    """
    if not isinstance(codes, torch.Tensor) or codes.dim() != 3:
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"codes must be a tensor of shape (N, n_hashes, L), got {shape}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    return torch.argsort(codes, dim=-1, stable=True)


def resolve_rotations(
    x: torch.Tensor,
    n_hashes: int,
    chunk_size: int,
    rotations: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The rotations ``nlsa`` hashes x (N, L, d) with: the caller's, checked, or fresh ones.

    Fresh rotations come from ``generator`` when given (float64 for float64 x, else
    float32, so that a seed hashes alike in every precision).
    """
    n_hashes = check_positive_int(n_hashes, "n_hashes")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    _, length, d = x.shape
    half = num_buckets(length, chunk_size) // 2
    if rotations is None:
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if generator is not None and generator.device != x.device:
            raise ValueError(f"generator is on {generator.device} but x is on {x.device}")
        return random_rotations(d, n_hashes, 2 * half, generator=generator, device=x.device, dtype=dtype)
    check_rotations(rotations, d, x.device)
    if rotations.shape[1:] != (n_hashes, half):
        raise ValueError(
            f"rotations must have shape (d, n_hashes, n_buckets // 2) = ({d}, {n_hashes}, {half}) "
            f"for L = {length} and chunk_size = {chunk_size}, got {tuple(rotations.shape)}"
        )
    return rotations
