"""Triton forward (chunked attention over all rounds, and nlsa end to end) against the reference."""
import pytest
import torch

import nlsa_triton as nt
from conftest import DEVICE, SHAPE_ARGS, SHAPES, assert_close, bucket_perm, make_inputs, shapes
from nlsa_triton import reference, streaming

# Measured (interpreter, this grid): fp32 <= 3.4e-7, fp16 <= 2.6e-4 overall and 2.8e-4 on
# the worst block of 16 rows; assert_close also holds every block to twice the tolerance.
TOLERANCE = {torch.float32: 2e-6, torch.float16: 6e-4}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(SHAPE_ARGS, SHAPES)
def test_chunked_attention_triton_equals_reference(n, length, d, c, n_hashes, chunk_size, dtype):
    x, y, gen = make_inputs(n, length, d, c, seed=length * 7 + n_hashes, dtype=dtype)
    perm = bucket_perm(n, n_hashes, length, gen)
    out = nt.chunked_attention(x, y, perm, chunk_size, backend="triton")
    # The reference sees the same (rounded) inputs and computes in float64.
    expected = nt.reference.chunked_attention(x.double().cpu(), y.double().cpu(), perm.cpu(), chunk_size)
    assert out.dtype == dtype
    assert_close("out", out.cpu(), expected, TOLERANCE[dtype], block_factor=2)


@pytest.mark.parametrize(
    "n, length, n_hashes, chunk_size",
    [
        pytest.param(2, 50, 4, 16, id="many_chunks"),
        pytest.param(1, 300, 8, 144, id="chunk144"),
        pytest.param(1, 13, 2, 144, id="L<K"),
    ],
)
def test_nlsa_triton_equals_reference(n, length, n_hashes, chunk_size):
    x, y, _ = make_inputs(n, length, 16, 64, seed=length)
    out = nt.nlsa(x, y, n_hashes=n_hashes, chunk_size=chunk_size,
                  generator=torch.Generator(DEVICE).manual_seed(5), backend="triton")
    expected = nt.reference.nlsa(x.double(), y.double(), n_hashes=n_hashes, chunk_size=chunk_size,
                                 generator=torch.Generator(DEVICE).manual_seed(5))
    assert_close("out", out, expected, TOLERANCE[torch.float32])


def test_int32_perm_is_accepted():
    x, y, gen = make_inputs(1, 40, 8, 24, seed=1)
    perm = bucket_perm(1, 2, 40, gen, n_codes=4)
    a = nt.chunked_attention(x, y, perm, 16, backend="triton")
    b = nt.chunked_attention(x, y, perm.int(), 16, backend="triton")
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------
# The forward's log-sum-exp: what the backward recomputes the probabilities from


LSE_SHAPES = shapes("L=1_N2", "L<K", "L=K", "two_chunks", "two_chunks_padded", "padding_longer_than_tail",
                    "N3_odd", "N2-L700-P20", "N2-L577-P143", "L432-no_padding")
# Measured (interpreter, these shapes, relative norm): the Triton lse <= 1e-7 from fp32 and
# from fp16 inputs (lse is fp32 in both, and the reference sees the same rounded inputs),
# 6e-8 on the worst block of 16 pixels; the torch backend's <= 6e-8. A round left out of
# the sum, or a candidate counted with the wrong multiplicity, moves lse by O(log 2).
LSE_TOLERANCE = 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(SHAPE_ARGS, LSE_SHAPES)
def test_triton_lse_equals_reference_lse(n, length, d, c, n_hashes, chunk_size, dtype):
    """The registered forward op's lse (N, L) fp32, log of the sum of exp(score) over every
    round's candidates (docs/semantics.md §6), is the reference's, in float64 on the same
    rounded inputs: the backward's probabilities exp(s - lse) depend on it."""
    x, y, gen = make_inputs(n, length, d, c, seed=length * 13 + n_hashes, dtype=dtype)
    perm = bucket_perm(n, n_hashes, length, gen)
    out, lse, out_fp32 = torch.ops.nlsa_triton.chunked_attention_fwd(x, y, perm, chunk_size, "full", True)
    expected_out, expected = reference.chunked_attention_with_lse(x.double().cpu(), y.double().cpu(), perm.cpu(),
                                                                  chunk_size)
    assert lse.dtype == torch.float32 and lse.shape == (n, length)
    assert_close("lse", lse.cpu()[..., None], expected[..., None], LSE_TOLERANCE, block_factor=2)
    assert_close("out", out.cpu(), expected_out, TOLERANCE[dtype], block_factor=2)
    if dtype == torch.float32:
        assert out_fp32.numel() == 0  # nothing to keep: out is the fp32 output
    else:  # the output before rounding, kept for the backward (measured <= 1.3e-4)
        assert torch.equal(out_fp32.to(dtype), out)
        assert_close("out_fp32", out_fp32.cpu(), expected_out, TOLERANCE[dtype], block_factor=2)


@pytest.mark.parametrize(SHAPE_ARGS, LSE_SHAPES)
def test_torch_backend_lse_equals_reference_lse(n, length, d, c, n_hashes, chunk_size):
    """The torch backend's forward keeps an lse for its backward, (N L + 1,) with +inf in the
    discarded row that padded positions write to: the same lse as the reference's."""
    x, y, gen = make_inputs(n, length, d, c, seed=length * 13 + n_hashes)
    perm = bucket_perm(n, n_hashes, length, gen)
    out, lse = streaming._forward(x, y, perm, chunk_size, None, with_lse=True)
    expected_out, expected = reference.chunked_attention_with_lse(x.double(), y.double(), perm, chunk_size)
    assert lse.shape == (n * length + 1,) and lse[-1].item() == float("inf")
    assert_close("lse", lse[:-1].view(n, length, 1), expected[..., None], LSE_TOLERANCE, block_factor=2)
    assert_close("out", out, expected_out, TOLERANCE[torch.float32], block_factor=2)
