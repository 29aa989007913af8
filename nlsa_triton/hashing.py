"""The hash's parameters: the bucket count (docs/semantics.md §1) and the random rotations (§2).

``num_buckets`` gives B for an image of L pixels, ``random_rotations`` draws the
(d, n_hashes, B // 2) rotations, and ``resolve_rotations`` is what ``nlsa`` hashes with:
the caller's rotations, checked, or fresh ones. The codes themselves are computed by each
backend's ``lsh_hash`` (``functional.lsh_hash`` chooses one).
"""
from __future__ import annotations

import torch

from ._validation import FLOAT_DTYPES, check_generator, check_positive_int, check_rotations

MAX_BUCKETS = 128


def num_buckets(length: int, chunk_size: int) -> int:
    """Number of hash buckets B for L = ``length`` pixels (docs/semantics.md §1).

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
    returned tensor) makes a call reproducible (docs/semantics.md §2, §9.3). ``dtype``
    defaults to float32.
    """
    d = check_positive_int(d, "d")
    n_hashes = check_positive_int(n_hashes, "n_hashes")
    n_buckets = check_positive_int(n_buckets, "n_buckets")
    if n_buckets % 2:
        raise ValueError(f"n_buckets must be even (codes are argmax over [p, -p]), got {n_buckets}")
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float16, bfloat16, float32 or float64, got {dtype}")
    check_generator(generator, device, "device")
    if generator is not None and device is None:
        device = generator.device
    return torch.randn(
        (d, n_hashes, n_buckets // 2),
        generator=generator,
        device=device,
        dtype=dtype or torch.float32,
    )


def resolve_rotations(
    x: torch.Tensor,
    n_hashes: int,
    chunk_size: int,
    rotations: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The rotations ``nlsa`` hashes x (N, L, d) with: the caller's, checked, or fresh ones.

    Fresh rotations are drawn in float32 (from ``generator`` when given), whatever x's
    dtype, so that one seed gives one hash in every precision (docs/semantics.md §9.3).
    """
    n_hashes = check_positive_int(n_hashes, "n_hashes")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    _, length, d = x.shape
    if length == 0:
        raise ValueError(f"x must have at least one position (L >= 1) to be hashed, got shape {tuple(x.shape)}")
    half = num_buckets(length, chunk_size) // 2
    if rotations is None:
        check_generator(generator, x.device)
        return random_rotations(d, n_hashes, 2 * half, generator=generator, device=x.device)
    check_rotations(rotations, d, x.device)
    if rotations.shape[1:] != (n_hashes, half):
        raise ValueError(
            f"rotations must have shape (d, n_hashes, n_buckets // 2) = ({d}, {n_hashes}, {half}) "
            f"for L = {length} and chunk_size = {chunk_size}, got {tuple(rotations.shape)}"
        )
    return rotations
