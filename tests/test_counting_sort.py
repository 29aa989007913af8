"""The Triton path's sort: hash + counting sort (``_ops.lsh_sort``) is torch's stable argsort
of the hash codes, bit for bit (docs/semantics.md §3)."""
import pytest
import torch

import nlsa_triton as nt
from conftest import DEVICE
from nlsa_triton import _ops
from nlsa_triton.kernels import HASH_BLOCK_L, counting_sort


@pytest.mark.parametrize("n, rounds, length, buckets", [
    pytest.param(1, 1, 1, 2, id="L=1"),
    pytest.param(2, 3, 63, 2, id="two_buckets"),
    pytest.param(1, 2, 64, 128, id="one_block"),
    pytest.param(2, 2, 16 * 64 + 65, 6, id="two_sort_programs"),
    pytest.param(1, 1, 3 * 16 * 64, 128, id="many_ties_128"),
])
def test_counting_sort_equals_stable_argsort(n, rounds, length, buckets):
    gen = torch.Generator().manual_seed(length)
    codes = torch.randint(0, buckets, (n, rounds, length), generator=gen)
    codes[..., : length // 3] = buckets - 1  # long runs of one bucket: order among equals
    hist = torch.stack([torch.stack([torch.nn.functional.pad(block, (0, HASH_BLOCK_L - len(block)), value=-1)
                                     for block in row.split(HASH_BLOCK_L)]) for row in codes.reshape(-1, length)])
    hist = (hist[..., None] == torch.arange(1 << (buckets - 1).bit_length())).sum(2).to(torch.int32)
    hist = hist.reshape(n, rounds, -1, hist.shape[-1])
    perm = counting_sort(codes.to(torch.int8).to(DEVICE), hist.to(DEVICE), HASH_BLOCK_L)
    assert perm.dtype == torch.int32
    assert torch.equal(perm.cpu().long(), torch.argsort(codes, dim=-1, stable=True))


@pytest.mark.parametrize("n, length, d, rounds, buckets", [
    pytest.param(2, 300, 16, 4, 2, id="two_buckets"),
    pytest.param(1, 1500, 12, 2, 128, id="128_buckets"),
])
def test_lsh_sort_is_bucket_sort_of_lsh_hash(n, length, d, rounds, buckets):
    gen = torch.Generator().manual_seed(buckets)
    x = torch.randn(n, length, d, generator=gen)
    x[0, 5] = float("nan")  # code 0, as in the reference
    x = x.to(DEVICE)
    rotations = nt.random_rotations(d, rounds, buckets, generator=gen).to(DEVICE)
    expected = nt.bucket_sort(nt.lsh_hash(x, rotations, backend="triton"))
    # A channel-major view (as the module's convolutions give): read through its strides.
    x_t = x.transpose(1, 2).contiguous().transpose(1, 2)
    for inp in (x, x_t):
        assert torch.equal(_ops.lsh_sort(inp, rotations).long(), expected)


def test_lsh_sort_passes_opcheck():
    """Schema, fake tensor and dispatch of the op (torch.compile runs it as an opaque op)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 70, 8, generator=gen).to(DEVICE)
    rotations = torch.randn(8, 3, 4, generator=gen).to(DEVICE)
    torch.library.opcheck(_ops.lsh_sort, (x, rotations))
