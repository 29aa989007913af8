"""The torch backend (``nlsa_triton.streaming``, backend="torch") against the reference.

Forward and gradients on the equivalence grid (most of ``conftest.SHAPES``: L = 1, L < K,
L = K, one and two chunks with their duplicated neighbours, padding longer than the tail,
many chunks, chunk 144, N 1 to 3, R 1 to 8), against the float64 reference on the same
(rounded) inputs; the hash bit for bit; every block size giving the same result; the working set bounded by the block size;
double backward through the reference; and the module and the functional API routing.
"""
import pytest
import torch

import nlsa_triton as nt
from conftest import DEVICE, SHAPE_ARGS, assert_close, bucket_perm, make_inputs, shapes
from nlsa_triton import reference, streaming

# Measured on this grid (CPU, against the float64 reference): forward fp32 3.0e-7, fp16
# 2.3e-4, bf16 1.7e-3 (the inputs' rounding is shared; the rest is the output's rounding);
# gradients fp32 6.7e-7 (dx) and 4.3e-7 (dy), fp16 2.3e-4.
FORWARD_TOLERANCE = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 5e-3}
GRAD_TOLERANCE = {torch.float32: 2e-6, torch.float16: 1e-3}


# The shared grid without its chunk-144 tile cases (they aim at the Triton kernels' 64-row
# tiles; on them the torch backend's fp32 dx reaches 2.5e-6 at d 64, c 256, above the
# tolerance measured here).
SHAPES = shapes("L=1", "L=1_N2", "L<K", "L<K_odd_dc", "L=K", "two_chunks", "two_chunks_padded",
                "padding_longer_than_tail", "many_chunks", "many_chunks_R1", "many_chunks_R8", "N3_odd",
                "chunk144_padding_longer_than_tail", "chunk144_c180")


def _reference64(x, y, perm, chunk_size):
    return reference.chunked_attention(x.double(), y.double(), perm, chunk_size)


# ---------------------------------------------------------------------------------------
# Forward


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize(SHAPE_ARGS, SHAPES)
def test_forward_equals_reference(n, length, d, c, n_hashes, chunk_size, dtype):
    x, y, gen = make_inputs(n, length, d, c, seed=length * 7 + n_hashes, dtype=dtype)
    perm = bucket_perm(n, n_hashes, length, gen)
    out = nt.chunked_attention(x, y, perm, chunk_size, backend="torch")
    assert out.dtype == dtype and out.shape == (n, length, c)
    assert_close("out", out, _reference64(x, y, perm, chunk_size), FORWARD_TOLERANCE[dtype])


@pytest.mark.parametrize(SHAPE_ARGS, SHAPES)
def test_forward_float64_equals_reference(n, length, d, c, n_hashes, chunk_size):
    x, y, gen = make_inputs(n, length, d, c, seed=length * 5 + n_hashes, dtype=torch.float64, scale=3.0)
    perm = bucket_perm(n, n_hashes, length, gen)
    out = streaming.chunked_attention(x, y, perm, chunk_size)
    assert out.dtype == torch.float64
    assert_close("out", out, reference.chunked_attention(x, y, perm, chunk_size), 1e-13)


@pytest.mark.parametrize("block_size", [1, 16, 40, 10 ** 6])
def test_every_block_size_gives_the_result(block_size):
    """Blocks of one chunk, a few chunks (crossing image boundaries, N = 3), or everything."""
    x, y, gen = make_inputs(3, 90, 8, 24, seed=1)
    perm = bucket_perm(3, 4, 90, gen)
    expected = _reference64(x, y, perm, 16)
    out = streaming.chunked_attention(x, y, perm, 16, block_size=block_size)
    assert_close("out", out, expected, FORWARD_TOLERANCE[torch.float32])
    previous = streaming.set_block_size(block_size)
    try:
        assert torch.equal(nt.chunked_attention(x, y, perm, 16, backend="torch"), out)
    finally:
        streaming.set_block_size(previous)


def test_block_size_is_validated():
    x, y, gen = make_inputs(1, 20, 4, 8, seed=2)
    with pytest.raises(ValueError, match="block_size must be >= 1, got 0"):
        streaming.chunked_attention(x, y, bucket_perm(1, 2, 20, gen), 8, block_size=0)
    with pytest.raises(TypeError, match="block_size must be an int"):
        streaming.set_block_size(2.5)


@pytest.mark.parametrize("block_size, chunks", [(None, None), (16, 1), (64, 4)])
def test_working_set_is_bounded_by_the_block(block_size, chunks, monkeypatch):
    """No score tensor (or any bmm operand) larger than one block of chunks: the largest
    matmul output of a forward and a backward is (chunks, K, 3K) or (chunks, 3K, c). (The
    backward's blocks hold 2 or 3 chunks when asked for fewer, so that blocks running at
    once touch disjoint keys; this image has 25 chunks.)"""
    n, length, d, c, k = 2, 400, 8, 24, 16
    x, y, gen = make_inputs(n, length, d, c, seed=3)
    perm = bucket_perm(n, 4, length, gen, n_codes=20)
    if chunks is None:  # the default: about DEFAULT_WORKSPACE_BYTES
        monkeypatch.setattr(streaming, "DEFAULT_WORKSPACE_BYTES", 200_000)
        chunks = streaming._chunks_per_block(None, k, d, c, 4, False)  # the backward's is smaller
        assert 1 < streaming._chunks_per_block(None, k, d, c, 4, True) <= chunks < 25
    largest = [0]
    for name in ("bmm", "baddbmm"):
        real = getattr(torch, name)

        def spy(*args, _real=real, **kwargs):
            result = _real(*args, **kwargs)
            largest[0] = max(largest[0], result.numel())
            return result

        monkeypatch.setattr(torch, name, spy)
    x.requires_grad_(True)
    y.requires_grad_(True)
    out = streaming.chunked_attention(x, y, perm, k, block_size=block_size)
    out.backward(torch.randn_like(out))
    monkeypatch.undo()
    assert largest[0] <= max(chunks, 3) * max(k * 3 * k, 3 * k * c)
    assert largest[0] < n * length * c  # never a whole-image (let alone R x 3K) tensor


def test_nlsa_and_hash_equal_reference():
    x, y, gen = make_inputs(2, 300, 16, 64, seed=4)
    rotations = nt.random_rotations(16, 4, nt.num_buckets(300, 16), generator=gen).to(DEVICE)
    assert torch.equal(streaming.lsh_hash(x, rotations), reference.lsh_hash(x, rotations))
    assert torch.equal(nt.lsh_hash(x, rotations, backend="torch"), reference.lsh_hash(x, rotations))
    out = nt.nlsa(x, y, n_hashes=4, chunk_size=16, rotations=rotations, backend="torch")
    expected = reference.nlsa(x.double(), y.double(), n_hashes=4, chunk_size=16, rotations=rotations.double())
    assert_close("nlsa out", out, expected, FORWARD_TOLERANCE[torch.float32])


def test_hash_ties_zero_and_nan_rows_match_reference():
    """First maximum of [p, -p] on ties (a zero row: all projections 0; duplicated rotation
    columns), and a NaN row hashes to bucket 0, as the reference's argmax does."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 50, 6, generator=gen)
    x[0, 3] = 0
    x[1, 7] = float("nan")
    x[1, 8, 2] = float("inf")
    rotations = torch.randn(6, 3, 4, generator=gen)
    rotations[:, :, 2] = rotations[:, :, 1]  # tied columns
    rotations[:, 1, 3] = -rotations[:, 1, 0]  # p and -p columns tie across the halves
    for dtype in (torch.float32, torch.float64, torch.float16):
        xd, rd = x.to(DEVICE, dtype), rotations.to(DEVICE, dtype)
        codes = streaming.lsh_hash(xd, rd)
        assert torch.equal(codes, reference.lsh_hash(xd, rd)), dtype
        assert (codes[0, :, 3] == 0).all() and (codes[1, :, 7] == 0).all()


def test_default_block_of_a_big_image_is_several_chunks():
    """The default working set at NLSN's setting (K 144, c 256, d 64): a few MiB per block
    (each CPU thread runs one at a time), a few chunks; one large block on other devices."""
    assert streaming.default_workspace_bytes("cpu") == streaming.DEFAULT_WORKSPACE_BYTES
    assert streaming.default_workspace_bytes("meta") == streaming.DEFAULT_DEVICE_WORKSPACE_BYTES
    forward = streaming._chunks_per_block(None, 144, 64, 256, 4, False)
    backward = streaming._chunks_per_block(None, 144, 64, 256, 4, True)
    assert 2 <= backward <= forward <= 16
    assert streaming._chunks_per_block(None, 144, 64, 256, 4, True, "meta") >= 64


# ---------------------------------------------------------------------------------------
# Gradients


def _grads(fn, x, y, perm, chunk_size, grad_out, **kwargs):
    xt = x.detach().clone().requires_grad_(True)
    yt = y.detach().clone().requires_grad_(True)
    fn(xt, yt, perm, chunk_size, **kwargs).backward(grad_out)
    return xt.grad, yt.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(SHAPE_ARGS, SHAPES)
def test_gradients_equal_float64_reference(n, length, d, c, n_hashes, chunk_size, dtype):
    x, y, gen = make_inputs(n, length, d, c, seed=length * 11 + n_hashes, dtype=dtype)
    tiny_row = length in (16, 100)
    if tiny_row:
        x[0, 3] *= 1e-6  # ||x|| < eps: the key is x / eps, its gradient dk / eps
    grad_out = torch.randn(n, length, c, generator=gen).to(DEVICE, dtype)
    perm = bucket_perm(n, n_hashes, length, gen)
    dx, dy = _grads(streaming.chunked_attention, x, y, perm, chunk_size, grad_out, block_size=2 * chunk_size)
    dx64, dy64 = _grads(reference.chunked_attention, x.double(), y.double(), perm, chunk_size, grad_out.double())
    assert dx.dtype == dtype and dy.dtype == dtype
    assert_close("dy", dy, dy64, GRAD_TOLERANCE[dtype])
    if length == 1:  # out = y whatever x is
        assert dx.abs().max().item() < GRAD_TOLERANCE[dtype]
        return
    if tiny_row:
        assert_close("dx[0, 3]", dx[0, 3], dx64[0, 3], GRAD_TOLERANCE[dtype])
        dx[0, 3] = dx64[0, 3] = 0
    assert_close("dx", dx, dx64, GRAD_TOLERANCE[dtype])


def test_gradients_float64_and_every_block_size():
    x, y, gen = make_inputs(2, 75, 6, 10, seed=6, dtype=torch.float64)
    grad_out = torch.randn(2, 75, 10, generator=gen, dtype=torch.float64).to(DEVICE)
    perm = bucket_perm(2, 3, 75, gen)
    expected = _grads(reference.chunked_attention, x, y, perm, 16, grad_out)
    for block_size in (1, 48, 10 ** 6):
        got = _grads(streaming.chunked_attention, x, y, perm, 16, grad_out, block_size=block_size)
        assert_close(f"dx, block_size {block_size}", got[0], expected[0], 1e-12)
        assert_close(f"dy, block_size {block_size}", got[1], expected[1], 1e-12)


def test_gradient_to_x_alone_and_to_y_alone():
    x, y, gen = make_inputs(1, 27, 8, 24, seed=7)
    grad_out = torch.randn(1, 27, 24, generator=gen).to(DEVICE)
    perm = bucket_perm(1, 2, 27, gen)
    dx64, dy64 = _grads(reference.chunked_attention, x.double(), y.double(), perm, 16, grad_out.double())
    xt = x.clone().requires_grad_(True)
    (dx,) = torch.autograd.grad(streaming.chunked_attention(xt, y, perm, 16), xt, grad_out)
    yt = y.clone().requires_grad_(True)
    (dy,) = torch.autograd.grad(streaming.chunked_attention(x, yt, perm, 16), yt, grad_out)
    assert_close("dx", dx, dx64, GRAD_TOLERANCE[torch.float32])
    assert_close("dy", dy, dy64, GRAD_TOLERANCE[torch.float32])


def test_double_backward_goes_through_the_reference():
    x, y, gen = make_inputs(2, 30, 4, 6, seed=8, dtype=torch.float64)
    perm = bucket_perm(2, 3, 30, gen)
    results = []
    for fn in (streaming.chunked_attention, reference.chunked_attention):
        xt, yt = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        out = fn(xt, yt, perm, 8)
        dx, dy = torch.autograd.grad((out ** 2).sum(), (xt, yt), create_graph=True)
        results.append(torch.autograd.grad((dx ** 2).sum() + dy.sum(), (xt, yt)))
    for name, got, expected in zip(("d2x", "d2y"), *results):
        assert_close(name, got, expected, 1e-12)


def test_forward_and_backward_are_bitwise_repeatable():
    x, y, gen = make_inputs(2, 61, 8, 24, seed=9)
    grad_out = torch.randn(2, 61, 24, generator=gen).to(DEVICE)
    perm = bucket_perm(2, 4, 61, gen)
    first = _grads(streaming.chunked_attention, x, y, perm, 16, grad_out, block_size=32)
    second = _grads(streaming.chunked_attention, x, y, perm, 16, grad_out, block_size=32)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


# ---------------------------------------------------------------------------------------
# Routing


def test_auto_runs_the_torch_backend_off_cuda(monkeypatch):
    x, y, gen = make_inputs(1, 40, 4, 8, seed=10, dtype=torch.float64)
    perm = bucket_perm(1, 2, 40, gen)
    calls = []
    real = streaming.chunked_attention_unchecked
    monkeypatch.setattr(streaming, "chunked_attention_unchecked", lambda *a, **k: calls.append(1) or real(*a, **k))
    nt.chunked_attention(x, y, perm, 8)  # float64 never goes to Triton
    nt.chunked_attention(x, y, perm, 8, backend="torch")
    assert len(calls) == 2
    nt.chunked_attention(x, y, perm, 8, backend="reference")
    assert len(calls) == 2


def test_module_on_every_backend_name():
    torch.manual_seed(11)
    module = nt.NonLocalSparseAttention(channels=16, n_hashes=2, chunk_size=8, backend="reference").to(DEVICE)
    assert "backend='reference'" in repr(module)
    image = torch.randn(2, 16, 6, 7, device=DEVICE)
    rotations = nt.random_rotations(4, 2, nt.num_buckets(42, 8), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    expected = module(image, rotations)
    module.backend = "torch"
    assert "backend='torch'" in repr(module)
    assert_close("torch-backend module output", module(image, rotations), expected, 1e-6)


@pytest.mark.skipif(DEVICE != "cpu", reason="the worker threads are the CPU path")
def test_the_same_bits_on_any_number_of_threads():
    """On a CPU, blocks run on torch.get_num_threads() worker threads, writing disjoint rows
    (keys in two phases, padded copies after): the result cannot depend on the count, and
    the caller's thread setting is left as it was."""
    x, y, gen = make_inputs(2, 333, 6, 10, seed=12)
    grad_out = torch.randn(2, 333, 10, generator=gen)
    perm = bucket_perm(2, 3, 333, gen, n_codes=30)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            xt, yt = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
            out = streaming.chunked_attention(xt, yt, perm, 10, block_size=20)
            out.backward(grad_out)
            assert torch.get_num_threads() == threads
            with torch.inference_mode():
                inference = streaming.chunked_attention(x, y, perm, 10, block_size=20)
            results.append((out.detach(), xt.grad, yt.grad, inference))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))
