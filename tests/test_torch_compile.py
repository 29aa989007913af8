"""The Triton path as torch.library custom ops: opcheck, and torch.compile(fullgraph=True).

With a GPU every test runs on it (inductor compiles the graph around the ops). Without one
the ops run in Triton's interpreter on the CPU: opcheck runs the same, and torch.compile runs
with the aot_eager backend (dynamo + fake tensors + AOT autograd, no code generation) and
with inductor where a C++ compiler is installed. GPU-only tests are marked so.
"""
import shutil

import pytest
import torch

import nlsa_triton as nt
from conftest import DEVICE, HAS_GPU, bucket_perm, make_inputs
from nlsa_triton import _ops

needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
HAS_CXX = shutil.which("g++") is not None or shutil.which("c++") is not None
COMPILERS = ["aot_eager"] + (["inductor"] if HAS_GPU or HAS_CXX else [])
N, L, D, C, R, K = 2, 20, 4, 8, 2, 8


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _inputs(n=N, length=L, d=D, c=C, seed=0, dtype=torch.float32):
    x, y, gen = make_inputs(n, length, d, c, seed=seed, dtype=dtype)
    perm = bucket_perm(n, R, length, gen, n_codes=4)
    rotations = nt.random_rotations(d, R, nt.num_buckets(length, K), generator=gen).to(DEVICE)
    return x, y, perm, rotations


# ---------------------------------------------------------------------------------------
# opcheck: schema, fake tensors, autograd registration, AOT dispatch (static and dynamic)


def test_opcheck_lsh_hash():
    x, _, _, rotations = _inputs()
    torch.library.opcheck(_ops.lsh_hash, (x, rotations))


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("perm_check", ["full", "range", "none"])
def test_opcheck_chunked_attention_forward(requires_grad, perm_check):
    x, y, perm, _ = _inputs()
    x.requires_grad_(requires_grad)
    y.requires_grad_(requires_grad)
    torch.library.opcheck(_ops.chunked_attention_fwd_op, (x, y, perm, K, perm_check, requires_grad))


def test_opcheck_chunked_attention_backward():
    x, y, perm, _ = _inputs()
    out, lse, _ = _ops.chunked_attention_fwd_op(x, y, perm, K, "none", False)
    grad_out = torch.randn_like(out)
    torch.library.opcheck(_ops.chunked_attention_bwd_op, (grad_out, x, y, perm, out, lse, K))


def test_opcheck_empty_batch():
    x, y, perm, _ = _inputs(n=0)
    x.requires_grad_(True)
    torch.library.opcheck(_ops.chunked_attention_fwd_op, (x, y, perm, K, "full", True))


# ---------------------------------------------------------------------------------------
# torch.compile(fullgraph=True)


def _nlsa(x, y, rotations):
    return nt.nlsa(x, y, n_hashes=R, chunk_size=K, rotations=rotations, backend="triton")


@pytest.mark.parametrize("compiler", COMPILERS)
def test_nlsa_compiles_without_graph_breaks(compiler):
    compiled = torch.compile(_nlsa, fullgraph=True, backend=compiler)
    x, y, _, rotations = _inputs(seed=1)
    results = []
    for fn in (compiled, _nlsa):
        xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        out = fn(xg, yg, rotations)
        grads = torch.autograd.grad((out * out).sum(), (xg, yg))
        results.append((out, *grads))
    for compiled_value, eager_value in zip(*results):
        torch.testing.assert_close(compiled_value, eager_value, rtol=1e-6, atol=1e-6)


def test_compiled_nlsa_follows_new_shapes():
    compiled = torch.compile(_nlsa, fullgraph=True, backend="aot_eager", dynamic=True)
    for n, length in ((2, 20), (1, 37), (3, 5)):
        x, y, _, _ = _inputs(n=n, length=length, seed=length)
        rotations = nt.random_rotations(D, R, nt.num_buckets(length, K), generator=torch.Generator().manual_seed(n))
        rotations = rotations.to(DEVICE)
        torch.testing.assert_close(compiled(x, y, rotations), _nlsa(x, y, rotations), rtol=1e-6, atol=1e-6)


def test_compiled_chunked_attention_still_checks_perm():
    def attend(x, y, perm):
        return nt.chunked_attention(x, y, perm, K, backend="triton")

    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
    x, y, perm, _ = _inputs(seed=2)
    torch.testing.assert_close(compiled(x, y, perm), attend(x, y, perm))
    bad = perm.clone()
    bad[1, 0, 3] = L
    with pytest.raises(ValueError, match=r"perm must hold indices in \[0, L\)"):
        compiled(x, y, bad)
    bad[1, 0, 3] = bad[1, 0, 4]
    with pytest.raises(ValueError, match="must be a permutation"):
        compiled(x, y, bad)


@pytest.mark.parametrize("compiler", ["aot_eager"] + (["inductor"] if HAS_GPU else []))  # inductor's CPU convs: slow
def test_module_compiles_without_graph_breaks(compiler):
    torch.manual_seed(3)
    module = nt.NonLocalSparseAttention(channels=8, n_hashes=R, chunk_size=K, backend="triton").to(DEVICE)
    compiled = torch.compile(module, fullgraph=True, backend=compiler)
    image = torch.randn(2, 8, 4, 5, device=DEVICE)
    rotations = nt.random_rotations(2, R, nt.num_buckets(20, K), generator=torch.Generator().manual_seed(0))
    rotations = rotations.to(DEVICE)
    torch.testing.assert_close(compiled(image, rotations), module(image, rotations), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(image, rotations), module(image, rotations), rtol=1e-5, atol=1e-5)


# In half precision compiled and eager convolutions may round x differently, and a hash
# near a tie then puts a pixel in another bucket: the GPU half-precision tests use
# L <= chunk_size (one chunk, where the hash cannot change the result).


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_half_precision_module_trains_on_gpu(dtype):
    torch.manual_seed(4)
    module = nt.NonLocalSparseAttention(channels=16, n_hashes=4, chunk_size=160).to(DEVICE, dtype)
    compiled = torch.compile(module, fullgraph=True)
    image = torch.randn(2, 16, 12, 13, device=DEVICE, dtype=dtype)
    rotations = nt.random_rotations(4, 4, nt.num_buckets(156, 160), generator=torch.Generator().manual_seed(1))
    rotations = rotations.to(DEVICE)
    out = compiled(image, rotations)
    torch.testing.assert_close(out, module(image, rotations), rtol=1e-2, atol=1e-2)
    out.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


@needs_gpu
def test_compiled_module_under_autocast_on_gpu():
    torch.manual_seed(5)
    module = nt.NonLocalSparseAttention(channels=16, n_hashes=2, chunk_size=100).to(DEVICE)
    compiled = torch.compile(module, fullgraph=True)
    image = torch.randn(1, 16, 10, 10, device=DEVICE)
    rotations = nt.random_rotations(4, 2, nt.num_buckets(100, 100), generator=torch.Generator().manual_seed(2))
    rotations = rotations.to(DEVICE)
    with torch.autocast("cuda", dtype=torch.float16):
        out = compiled(image, rotations)
        expected = module(image, rotations)
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-2)
