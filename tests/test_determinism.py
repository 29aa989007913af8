"""Determinism (same generator or rotations: the same bits) and dtypes (fp32 / fp16 / bf16
with fp32 accumulation, float64, autocast) on every backend."""
import pytest
import torch

import nlsa_triton as nt
from conftest import DEVICE, HAS_GPU, assert_close, make_inputs

BACKENDS = ["torch", "triton", "reference"]
HALF_DTYPES = [torch.float16] + ([torch.bfloat16] if HAS_GPU else [])  # the interpreter has no bf16 tl.dot


def _generator(seed):
    return torch.Generator(DEVICE).manual_seed(seed)


# ---------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_same_generator_same_bits(backend, dtype):
    x, y, _ = make_inputs(2, 60, 8, 16, seed=1, dtype=dtype)
    a = nt.nlsa(x, y, n_hashes=3, chunk_size=8, generator=_generator(7), backend=backend)
    b = nt.nlsa(x, y, n_hashes=3, chunk_size=8, generator=_generator(7), backend=backend)
    assert torch.equal(a, b)
    c = nt.nlsa(x, y, n_hashes=3, chunk_size=8, generator=_generator(8), backend=backend)
    assert not torch.equal(a, c)  # another seed, another hash


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_rotations_same_bits_and_generator_state_advances(backend):
    x, y, _ = make_inputs(1, 50, 8, 16, seed=2)
    gen = _generator(3)
    rotations = nt.random_rotations(8, 2, nt.num_buckets(50, 8), generator=gen)
    outs = [nt.nlsa(x, y, n_hashes=2, chunk_size=8, rotations=rotations, backend=backend) for _ in range(3)]
    assert all(torch.equal(outs[0], out) for out in outs[1:])
    # A generator passed on is consumed: the same generator object draws new rotations next time.
    gen = _generator(3)
    first = nt.nlsa(x, y, n_hashes=2, chunk_size=8, generator=gen, backend=backend)
    second = nt.nlsa(x, y, n_hashes=2, chunk_size=8, generator=gen, backend=backend)
    assert torch.equal(first, outs[0]) and not torch.equal(first, second)


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_reproducible_with_seed_generator_or_rotations(backend):
    torch.manual_seed(4)
    module = nt.NonLocalSparseAttention(channels=8, n_hashes=2, chunk_size=8, backend=backend).to(DEVICE)
    image = torch.randn(2, 8, 6, 5, device=DEVICE)
    assert torch.equal(module(image, generator=_generator(1)), module(image, generator=_generator(1)))
    torch.manual_seed(5)
    a = module(image)
    torch.manual_seed(5)
    assert torch.equal(a, module(image))  # fresh rotations from the global generator


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_bitwise_repeatable(backend):
    if backend == "reference" and HAS_GPU:
        pytest.skip("the reference's backward uses CUDA scatter-adds, which are not deterministic")
    x, y, _ = make_inputs(2, 40, 6, 12, seed=6)
    rotations = nt.random_rotations(6, 2, nt.num_buckets(40, 8), generator=_generator(2))
    grads = []
    for _ in range(2):
        xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        out = nt.nlsa(xg, yg, n_hashes=2, chunk_size=8, rotations=rotations, backend=backend)
        grads.append(torch.autograd.grad((out * out).sum(), (xg, yg)))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


# ---------------------------------------------------------------------------------------
# Dtypes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=lambda t: str(t).split(".")[1])
def test_half_precision_accumulates_in_float32(backend, dtype):
    x, y, _ = make_inputs(2, 70, 16, 24, seed=7, dtype=dtype)
    rotations = nt.random_rotations(16, 4, nt.num_buckets(70, 16), generator=_generator(4))
    out = nt.nlsa(x, y, n_hashes=4, chunk_size=16, rotations=rotations, backend=backend)
    assert out.dtype == dtype
    # Same (rounded) inputs in float64: only the output rounding and the half-precision
    # probabilities fed to the value product may differ.
    expected = nt.reference.nlsa(x.double(), y.double(), n_hashes=4, chunk_size=16, rotations=rotations.double())
    assert_close("out", out, expected, 4e-3 if dtype == torch.float16 else 2e-2)


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_float64_on_the_torch_backends(backend):
    x, y, _ = make_inputs(2, 30, 4, 8, seed=8, dtype=torch.float64)
    rotations = nt.random_rotations(4, 2, nt.num_buckets(30, 8), generator=_generator(5), dtype=torch.float64)
    out = nt.nlsa(x, y, n_hashes=2, chunk_size=8, rotations=rotations, backend=backend)
    assert out.dtype == torch.float64
    expected = nt.reference.nlsa(x, y, n_hashes=2, chunk_size=8, rotations=rotations)
    # The reference backend is the oracle itself; auto and torch run the streamed backend,
    # which sums in another order: equal to float64 rounding.
    if backend == "reference":
        assert torch.equal(out, expected)
    else:
        assert_close("out", out, expected, 1e-14)
    with pytest.raises(TypeError, match="float64"):
        nt.nlsa(x, y, n_hashes=2, chunk_size=8, rotations=rotations, backend="triton")


def _autocast_case():
    if HAS_GPU:
        return "cuda", torch.float16, BACKENDS
    return "cpu", torch.bfloat16, ["torch", "reference"]  # the CPU interpreter has no bfloat16 tl.dot


def test_functional_under_autocast():
    device_type, dtype, backends = _autocast_case()
    x, y, _ = make_inputs(2, 40, 8, 16, seed=9)
    rotations = nt.random_rotations(8, 2, nt.num_buckets(40, 8), generator=_generator(6))
    for backend in backends:
        with torch.autocast(device_type, dtype=dtype):
            out = nt.nlsa(x, y, n_hashes=2, chunk_size=8, rotations=rotations, backend=backend)
            mixed = nt.chunked_attention(x, y.to(dtype), nt.bucket_sort(nt.lsh_hash(x, rotations)), 8,
                                         backend=backend)
        assert out.dtype == dtype and mixed.dtype == dtype
        # Autocast = the inputs cast to its dtype, then the same fp32-accumulated computation.
        expected = nt.nlsa(x.to(dtype), y.to(dtype), n_hashes=2, chunk_size=8, rotations=rotations, backend=backend)
        assert torch.equal(out, expected)


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_module_under_autocast(backend):
    device_type, dtype, _ = _autocast_case()
    torch.manual_seed(10)
    # L <= chunk_size (one chunk): a hash near a tie may fall in another bucket once x is
    # rounded to the autocast dtype; with one chunk that cannot change the result.
    module = nt.NonLocalSparseAttention(channels=8, n_hashes=2, chunk_size=30, backend=backend).to(DEVICE)
    image = torch.randn(2, 8, 5, 6, device=DEVICE)
    rotations = nt.random_rotations(2, 2, nt.num_buckets(30, 30), generator=_generator(7))
    expected = module(image, rotations)
    with torch.autocast(device_type, dtype=dtype):
        out = module(image, rotations)
    assert out.dtype == torch.float32  # res_scale * attention (autocast dtype) + input (float32)
    assert torch.isfinite(out).all()
    assert_close("out under autocast", out, expected, 3e-2)
