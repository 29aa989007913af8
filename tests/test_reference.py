"""The torch reference against two independent statements of the same function."""
import pytest
import torch

import nlsa_triton as nt
from conftest import rel_err
from nlsn_transcription import nlsn_sparse_attention
from nlsa_triton.buckets import chunk_layout


def dense_multiplicity_attention(x, y, perm, chunk_size):
    """out_i = sum_j M_ij e^{s_ij} y_j / sum_j M_ij e^{s_ij}, where M_ij counts how often
    pixel j is among query i's candidates over all rounds, built by explicit loops."""
    n, length, _ = x.shape
    chunk, padding, n_chunks = chunk_layout(length, chunk_size)
    counts = torch.zeros(n, length, length, dtype=x.dtype)
    for b in range(n):
        for r in range(perm.shape[1]):
            order = perm[b, r].tolist()
            padded = order + order[length - padding:]
            for p in range(length):
                j = p // chunk
                for neighbour in (j, j - 1, j + 1):
                    start = (neighbour % n_chunks) * chunk
                    for key in padded[start:start + chunk]:
                        counts[b, order[p], key] += 1
    keys = x / x.norm(dim=-1, keepdim=True).clamp_min(5e-5)
    scores = x @ keys.transpose(1, 2)
    weights = counts * torch.exp(scores - scores.amax(-1, keepdim=True))
    return (weights / weights.sum(-1, keepdim=True)) @ y


SHAPES = [  # N, L, d, c, n_hashes, chunk_size
    pytest.param(1, 1, 4, 3, 1, 8, id="L=1"),
    pytest.param(2, 5, 4, 6, 2, 8, id="L<K"),
    pytest.param(1, 8, 4, 6, 3, 8, id="L=K"),
    pytest.param(2, 16, 4, 6, 2, 8, id="two_chunks"),
    pytest.param(1, 11, 4, 6, 2, 8, id="two_chunks_padded"),
    pytest.param(1, 21, 5, 7, 4, 8, id="padding_longer_than_tail"),
    pytest.param(2, 45, 6, 5, 3, 8, id="many_chunks"),
]


@pytest.mark.parametrize("n, length, d, c, n_hashes, chunk_size", SHAPES)
def test_reference_equals_dense_multiplicity_form(n, length, d, c, n_hashes, chunk_size):
    gen = torch.Generator().manual_seed(length * 31 + n_hashes)
    x = torch.randn(n, length, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, length, c, generator=gen, dtype=torch.float64)
    codes = torch.randint(0, 4, (n, n_hashes, length), generator=gen)
    perm = nt.bucket_sort(codes)
    expected = dense_multiplicity_attention(x, y, perm, chunk_size)
    assert rel_err(nt.reference.chunked_attention(x, y, perm, chunk_size), expected) < 1e-12


@pytest.mark.parametrize(
    "n, length, n_hashes, chunk_size",
    [
        pytest.param(1, 20, 2, 8, id="two_buckets_padded"),
        pytest.param(2, 50, 4, 8, id="many_chunks"),
        pytest.param(1, 300, 4, 144, id="nlsn_chunk_144"),
        pytest.param(1, 288, 1, 144, id="no_padding"),
    ],
)
def test_reference_nlsa_equals_nlsn_transcription(n, length, n_hashes, chunk_size):
    gen = torch.Generator().manual_seed(length)
    x = torch.randn(n, length, 8, generator=gen, dtype=torch.float64)
    y = torch.randn(n, length, 12, generator=gen, dtype=torch.float64)
    rotations = nt.random_rotations(8, n_hashes, nt.num_buckets(length, chunk_size), generator=gen,
                                    dtype=torch.float64)
    ours = nt.reference.nlsa(x, y, n_hashes=n_hashes, chunk_size=chunk_size, rotations=rotations)
    assert rel_err(ours, nlsn_sparse_attention(x, y, rotations, chunk_size)) < 1e-12


@pytest.mark.parametrize(
    "length, chunk_size, expected",
    [(1, 144, 2), (144, 144, 2), (145, 144, 2), (288, 144, 2), (432, 144, 4), (100 * 144, 144, 100),
     (129 * 144, 144, 128), (101 * 144, 144, 102)],
)
def test_num_buckets(length, chunk_size, expected):
    assert nt.num_buckets(length, chunk_size) == expected


def test_when_all_keys_fit_one_chunk_the_hash_does_not_matter():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 9, 4, generator=gen, dtype=torch.float64), torch.randn(2, 9, 5, generator=gen,
                                                                                   dtype=torch.float64)
    perm = torch.stack([torch.randperm(9, generator=gen) for _ in range(6)]).view(2, 3, 9)
    full = torch.softmax(x @ (x / x.norm(dim=-1, keepdim=True)).transpose(1, 2), -1) @ y
    assert rel_err(nt.reference.chunked_attention(x, y, perm, 16), full) < 1e-12
