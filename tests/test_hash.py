"""Hash and sort: the Triton hash kernel against the reference, the sort's contract."""
import pytest
import torch

import nlsa_triton as nt
from conftest import DEVICE


@pytest.mark.parametrize(
    "n, length, d, n_hashes, n_buckets",
    [
        pytest.param(1, 1, 4, 1, 2, id="L=1_two_buckets"),
        pytest.param(2, 70, 16, 4, 2, id="two_buckets"),
        pytest.param(1, 100, 12, 3, 10, id="odd_d"),
        pytest.param(2, 65, 64, 8, 36, id="wide"),
        pytest.param(1, 130, 7, 2, 128, id="max_buckets"),
    ],
)
def test_triton_hash_equals_reference_float64(n, length, d, n_hashes, n_buckets):
    gen = torch.Generator().manual_seed(n_buckets)
    x = torch.randn(n, length, d, generator=gen, dtype=torch.float64).to(DEVICE)
    rotations = nt.random_rotations(d, n_hashes, n_buckets, generator=gen, dtype=torch.float64).to(DEVICE)
    codes = nt.lsh_hash(x, rotations, backend="triton")
    expected = nt.reference.lsh_hash(x, rotations)
    assert codes.dtype == torch.int64 and codes.shape == (n, n_hashes, length)
    assert torch.equal(codes, expected)
    assert int(codes.min()) >= 0 and int(codes.max()) < n_buckets


def test_hash_is_argmax_of_plus_minus_projection_first_on_ties():
    # Rows along +e0, -e0 and 0 (all-tie: the first column of [p, -p] wins).
    x = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64, device=DEVICE)
    rotations = torch.tensor([[[1.0, 0.5]], [[0.0, 0.0]]], dtype=torch.float64, device=DEVICE)  # d=2, R=1, 2
    for backend in ("torch", "triton"):
        assert nt.lsh_hash(x, rotations, backend=backend).tolist() == [[[0, 2, 0]]]


def test_bucket_sort_is_stable_argsort():
    codes = torch.tensor([[[2, 0, 2, 1, 0, 2], [1, 1, 1, 1, 1, 1]]])
    perm = nt.bucket_sort(codes)
    assert perm.tolist() == [[[1, 4, 3, 0, 2, 5], [0, 1, 2, 3, 4, 5]]]


def test_random_rotations_reproducible_with_generator():
    a = nt.random_rotations(8, 4, 6, generator=torch.Generator().manual_seed(3))
    b = nt.random_rotations(8, 4, 6, generator=torch.Generator().manual_seed(3))
    assert a.shape == (8, 4, 3) and a.dtype == torch.float32 and torch.equal(a, b)
