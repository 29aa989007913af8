"""bench/nlsa_flex.py, NLSA through FlexAttention, computes nlsa_triton's function.

On CUDA, compiled flex (what the sweep times), forward and backward, in float32. On CPU,
compiled flex cannot run it (the last test pins down why), so eager flex checks the same
formulation (sorted copies, neighbour block mask, the two-chunk score_mod, the rounds'
log-sum-exp combination) in float64, where it must agree with the reference to rounding.
"""
import sys
import warnings
from pathlib import Path

import pytest
import torch

import nlsa_triton as nt
from conftest import DEVICE, assert_close

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import nlsa_flex  # noqa: E402

ON_GPU = DEVICE == "cuda"
DTYPE = torch.float32 if ON_GPU else torch.float64
TOLERANCE = 1e-5 if ON_GPU else 1e-13

# N, L, n_hashes, chunk_size: every chunk multiplicity NLSN has (one chunk: each key three
# times; two chunks: the other chunk twice) and padding shorter and longer than the tail.
SHAPES = [
    pytest.param(2, 10, 2, 16, id="one_chunk_L<K"),
    pytest.param(1, 16, 3, 16, id="one_chunk_L=K"),
    pytest.param(2, 20, 2, 16, id="two_chunks_padding_longer_than_tail"),
    pytest.param(1, 32, 2, 16, id="two_chunks_unpadded"),
    pytest.param(2, 100, 4, 8, id="many_chunks_padded"),
]
D, C = 16, 32  # flex's CUDA kernels want head dimensions of at least 16


@pytest.fixture(autouse=True)
def real_empty(poison_empty, monkeypatch):
    """Undo conftest's NaN-filled torch.empty here: torch.compile traces through torch.empty,
    where the in-place fill breaks tracing, and flex's kernels are torch's, not ours."""
    monkeypatch.undo()


def _inputs(n, length, n_hashes, chunk_size, requires_grad=False):
    gen = torch.Generator().manual_seed(length)
    # Scaled so that the softmaxes are peaked and a wrong candidate set shows.
    x = (3 * torch.randn(n, length, D, generator=gen, dtype=DTYPE)).to(DEVICE).requires_grad_(requires_grad)
    y = torch.randn(n, length, C, generator=gen, dtype=DTYPE).to(DEVICE).requires_grad_(requires_grad)
    rotations = nt.random_rotations(D, n_hashes, nt.num_buckets(length, chunk_size), generator=gen,
                                    dtype=DTYPE).to(DEVICE)
    return x, y, rotations


def _flex(x, y, rotations, chunk_size):
    mask = nlsa_flex.neighbour_chunks_mask(x.shape[1], chunk_size, x.device, compiled=ON_GPU)
    with warnings.catch_warnings():  # eager flex warns that it is unfused, which we know
        warnings.simplefilter("ignore", UserWarning)
        return nlsa_flex.nlsa_flex(x, y, rotations, chunk_size, mask, compiled=ON_GPU)


@pytest.mark.parametrize("n, length, n_hashes, chunk_size", SHAPES)
def test_flex_matches_reference(n, length, n_hashes, chunk_size):
    x, y, rotations = _inputs(n, length, n_hashes, chunk_size)
    with torch.no_grad():
        out = _flex(x, y, rotations, chunk_size)
        expected = nt.reference.nlsa(x, y, n_hashes=n_hashes, chunk_size=chunk_size, rotations=rotations)
    assert out.dtype == x.dtype
    assert_close("out", out, expected, TOLERANCE)


@pytest.mark.skipif(not ON_GPU, reason="FlexAttention has no backward on CPU (torch 2.13)")
@pytest.mark.parametrize("n, length, n_hashes, chunk_size", [SHAPES[2], SHAPES[4]])
def test_flex_gradients_match_reference(n, length, n_hashes, chunk_size):
    x, y, rotations = _inputs(n, length, n_hashes, chunk_size, requires_grad=True)
    grad_out = torch.randn(n, length, C, device=DEVICE, dtype=DTYPE)
    dx, dy = torch.autograd.grad(_flex(x, y, rotations, chunk_size), (x, y), grad_out)
    expected = nt.reference.nlsa(x, y, n_hashes=n_hashes, chunk_size=chunk_size, rotations=rotations)
    rx, ry = torch.autograd.grad(expected, (x, y), grad_out)
    assert_close("dx", dx, rx, 1e-4)
    assert_close("dy", dy, ry, 1e-5)


def test_compiled_cpu_flex_refuses_lse():
    """Why the sweep skips nlsa_flex on CPU: inductor's CPU flex template is inference-only
    and cannot return the log-sum-exp that combining the rounds needs. When a torch
    release lifts this, this test fails, and nlsa_flex can be timed on CPU."""
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    q = torch.randn(1, 1, 16, 16)
    with pytest.raises(Exception, match="return_lse` is not supported"):
        torch.compile(flex_attention)(q, q, q, return_aux=AuxRequest(lse=True))
