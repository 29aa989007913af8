"""Extreme and unusual inputs on every backend (triton, torch and reference): empty batches,
L = 1, tiny images, non-contiguous and channels_last layouts, huge norms, NaN pixels, random
shapes, and the module under DataParallel-style replication, no_grad and inference_mode."""
import copy
import random

import pytest
import torch

import nlsa_triton as nt
from conftest import DEVICE, assert_close, bucket_perm, make_inputs, rel_err
from nlsa_triton.chunks import chunk_layout

BACKENDS = ["torch", "triton", "reference"]


def sees(perm: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """(N, L, L) bool: [n, i, j] is True when pixel j is among query i's candidates in any round
    (docs/semantics.md §4.2: the query's chunk and its two neighbours, wrapping, padding copies the tail)."""
    perm = perm.cpu().long()
    n, rounds, length = perm.shape
    chunk, padding, n_chunks = chunk_layout(length, chunk_size)
    padded = torch.cat([perm, perm[:, :, length - padding:]], dim=2) if padding else perm
    chunks = padded.reshape(n, rounds, n_chunks, chunk)
    candidates = torch.cat([chunks, chunks.roll(1, dims=2), chunks.roll(-1, dims=2)], dim=3)
    result = torch.zeros(n, length, length, dtype=torch.bool)
    for b in range(n):
        for r in range(rounds):
            for position in range(length):
                j = position // chunk
                result[b, chunks[b, r, j, position % chunk], candidates[b, r, j]] = True
    return result


# ---------------------------------------------------------------------------------------
# Empty and tiny problems


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_forward_and_backward(backend):
    x, y, gen = make_inputs(0, 30, 4, 8, seed=1)
    x.requires_grad_(True)
    y.requires_grad_(True)
    perm = torch.zeros(0, 2, 30, dtype=torch.int64, device=DEVICE)
    out = nt.chunked_attention(x, y, perm, 8, backend=backend)
    assert out.shape == (0, 30, 8) and out.dtype == torch.float32
    out.sum().backward()
    assert x.grad.shape == x.shape and y.grad.shape == y.shape
    out = nt.nlsa(x, y, n_hashes=2, chunk_size=8, backend=backend)
    assert out.shape == (0, 30, 8)
    module = nt.NonLocalSparseAttention(channels=8, n_hashes=2, chunk_size=8, backend=backend).to(DEVICE)
    assert module(torch.randn(0, 8, 5, 6, device=DEVICE)).shape == (0, 8, 5, 6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_length_and_zero_channels(backend):
    x, y, _ = make_inputs(2, 0, 4, 8, seed=2)
    assert nt.chunked_attention(x, y, torch.zeros(2, 3, 0, dtype=torch.int64, device=DEVICE), 8,
                                backend=backend).shape == (2, 0, 8)
    x, y, gen = make_inputs(2, 12, 4, 0, seed=3)
    perm = bucket_perm(2, 2, 12, gen)
    assert nt.chunked_attention(x, y, perm, 8, backend=backend).shape == (2, 12, 0)
    assert nt.nlsa(x, y, n_hashes=2, chunk_size=8, backend=backend).shape == (2, 12, 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_hashes, chunk_size", [(1, 1), (3, 5), (4, 144)])
def test_single_position_returns_y(backend, n_hashes, chunk_size):
    x, y, _ = make_inputs(3, 1, 6, 10, seed=4)
    out = nt.nlsa(x, y, n_hashes=n_hashes, chunk_size=chunk_size, backend=backend)
    torch.testing.assert_close(out, y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("h, w", [(1, 1), (3, 5)])
def test_tiny_images_through_the_module(backend, h, w):
    torch.manual_seed(h * w)
    module = nt.NonLocalSparseAttention(channels=8, n_hashes=2, chunk_size=144, res_scale=0.5,
                                        backend=backend).to(DEVICE)
    image = torch.randn(2, 8, h, w, device=DEVICE)
    out = module(image)
    assert out.shape == image.shape and torch.isfinite(out).all()
    # L <= chunk_size: one chunk of every pixel, the hash cannot matter; compare with full attention.
    x = module.conv_match(image).flatten(2).transpose(1, 2)
    y = module.conv_assembly(image).flatten(2).transpose(1, 2)
    keys = torch.nn.functional.normalize(x, dim=-1, eps=5e-5)
    dense = torch.softmax(x @ keys.transpose(1, 2), dim=-1) @ y
    expected = dense.transpose(1, 2).reshape(image.shape) * 0.5 + image
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    if h * w == 1:
        torch.testing.assert_close(out, module.conv_assembly(image) * 0.5 + image, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Layouts


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs_give_the_contiguous_result(backend):
    x, y, gen = make_inputs(2, 40, 6, 12, seed=5)
    perm = bucket_perm(2, 3, 40, gen)
    expected = nt.chunked_attention(x, y, perm, 8, backend=backend)
    # x: every other feature of a wider tensor (last stride 2); y: a transposed (c, L) view;
    # perm: a transposed (N, L, R) tensor; and a slice along L with unit last stride.
    x_wide = torch.stack([x, torch.full_like(x, float("nan"))], dim=-1).flatten(2)[..., ::2]
    y_t = y.transpose(1, 2).contiguous().transpose(1, 2)
    perm_t = perm.transpose(1, 2).contiguous().transpose(1, 2)
    assert not (x_wide.is_contiguous() or y_t.is_contiguous() or perm_t.is_contiguous())
    out = nt.chunked_attention(x_wide, y_t, perm_t, 8, backend=backend)
    x_rows = torch.cat([x, x], dim=1)[:, ::2]  # rows of x at stride 2 (x, x interleaved: a different x)
    assert torch.equal(out, expected) if backend == "triton" else torch.allclose(out, expected, atol=1e-6)
    assert not x_rows.is_contiguous() and x_rows.stride(-1) == 1
    torch.testing.assert_close(nt.chunked_attention(x_rows, y, perm, 8, backend=backend),
                               nt.chunked_attention(x_rows.contiguous(), y, perm, 8, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_and_strided_images(backend):
    torch.manual_seed(6)
    module = nt.NonLocalSparseAttention(channels=8, n_hashes=2, chunk_size=8, backend=backend).to(DEVICE)
    image = torch.randn(2, 8, 6, 7, device=DEVICE)
    rotations = nt.random_rotations(2, 2, nt.num_buckets(42, 8), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    expected = module(image, rotations)
    last = image.to(memory_format=torch.channels_last)
    strided = torch.stack([image, image], dim=-1).flatten(-2)[..., ::2]  # W stride 2
    assert not strided.is_contiguous() and torch.equal(strided, image)
    for variant in (last, strided):
        torch.testing.assert_close(module(variant, rotations), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Extreme values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_huge_norms_stay_finite(backend, dtype):
    x, y, gen = make_inputs(2, 60, 8, 16, seed=7)
    x = (x / x.norm(dim=-1, keepdim=True) * 1e4).to(dtype)  # ||x|| = 1e4 for every row
    y = y.to(dtype)
    perm = bucket_perm(2, 3, 60, gen)
    out = nt.chunked_attention(x, y, perm, 8, backend=backend)
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = nt.reference.chunked_attention(x.double(), y.double(), perm, 8)
    assert_close("out", out, expected, 2e-3 if dtype == torch.float16 else 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["x", "y", "x_and_y"])
def test_nan_pixel_reaches_exactly_the_queries_that_see_it(backend, where):
    x, y, gen = make_inputs(2, 64, 4, 8, seed=8)
    perm = bucket_perm(2, 2, 64, gen, n_codes=8)
    j = 37
    if "x" in where:
        x[1, j, 2] = float("nan")
    if "y" in where:
        y[1, j, 5] = float("nan")
    out = nt.chunked_attention(x, y, perm, 4, backend=backend)
    expected_rows = sees(perm, 4)[1, :, j].to(out.device)
    assert 0 < int(expected_rows.sum()) < 64
    assert not torch.isnan(out[0]).any()  # the other image is untouched
    assert torch.equal(torch.isnan(out[1]).any(dim=-1), expected_rows)
    if where == "y":  # a NaN value channel spreads to that channel only
        assert torch.equal(torch.isnan(out[1]).any(dim=0), torch.arange(8, device=out.device) == 5)
    assert torch.isfinite(out[1][~expected_rows]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_pixel_through_the_hash(backend):
    """A NaN row of x hashes to bucket 0 on every backend; the NaN reaches exactly the queries whose
    candidates (from the perm of that hash) contain it."""
    x, y, gen = make_inputs(1, 50, 4, 8, seed=9)
    x[0, 11] = float("nan")
    rotations = nt.random_rotations(4, 3, nt.num_buckets(50, 4), generator=gen).to(DEVICE)
    codes = nt.lsh_hash(x, rotations, backend=backend)
    assert (codes[0, :, 11] == 0).all() and int(codes.max()) < nt.num_buckets(50, 4)
    out = nt.nlsa(x, y, n_hashes=3, chunk_size=4, rotations=rotations, backend=backend)
    expected_rows = sees(nt.bucket_sort(codes), 4)[0, :, 11].to(out.device)
    assert 0 < int(expected_rows.sum()) < 50
    assert torch.equal(torch.isnan(out[0]).any(dim=-1), expected_rows)


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_perm_false_skips_only_the_permutation_check(backend):
    x, y, gen = make_inputs(2, 20, 4, 8, seed=10)
    perm = bucket_perm(2, 2, 20, gen)
    expected = nt.chunked_attention(x, y, perm, 8, backend=backend)
    assert torch.equal(nt.chunked_attention(x, y, perm, 8, backend=backend, check_perm=False), expected)
    bad = perm.clone()
    bad[0, 1, 0] = bad[0, 1, 1]  # a repeated index: accepted (memory-safe, result undefined)
    assert nt.chunked_attention(x, y, bad, 8, backend=backend, check_perm=False).shape == (2, 20, 8)
    bad[0, 1, 0] = 20  # out of range: always refused
    with pytest.raises(ValueError, match=r"perm must hold indices in \[0, L\)"):
        nt.chunked_attention(x, y, bad, 8, backend=backend, check_perm=False)


# ---------------------------------------------------------------------------------------
# Random shapes, Triton and the torch backend against the reference


def _draws(count=15, seed=20240611):
    rng = random.Random(seed)
    draws = []
    for index in range(count):
        chunk = rng.choice([1, 2, 3, 5, 8, 13, 16, 24, 40])
        draws.append(dict(
            n=rng.randint(1, 3), length=rng.randint(1, 24 if chunk < 4 else 90),  # tiny chunks: many programs
            d=rng.randint(1, 20), c=rng.randint(1, 40),
            rounds=rng.randint(1, 4), chunk=chunk, scale=10 ** rng.uniform(-1, 1.3), end_to_end=index % 3 == 0,
            seed=rng.randrange(2 ** 31),
        ))
    return draws


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("draw", _draws(), ids=lambda d: "N{n}_L{length}_d{d}_c{c}_R{rounds}_K{chunk}".format(**d))
def test_random_shapes_equal_reference(draw, backend):
    """Forward and gradients of the Triton path (and the torch backend) against the float64 reference."""
    x, y, gen = make_inputs(draw["n"], draw["length"], draw["d"], draw["c"], seed=draw["seed"], scale=draw["scale"])
    grad_out = torch.randn(y.shape, generator=gen).to(DEVICE)
    x.requires_grad_(True)
    y.requires_grad_(True)
    if draw["end_to_end"]:
        rotations = nt.random_rotations(draw["d"], draw["rounds"], nt.num_buckets(draw["length"], draw["chunk"]),
                                        generator=gen).to(DEVICE)
        out = nt.nlsa(x, y, n_hashes=draw["rounds"], chunk_size=draw["chunk"], rotations=rotations,
                      backend=backend)
        perm = nt.bucket_sort(nt.lsh_hash(x, rotations, backend="reference"))
    else:
        perm = bucket_perm(draw["n"], draw["rounds"], draw["length"], gen, n_codes=draw["length"] // 3 + 1)
        out = nt.chunked_attention(x, y, perm, draw["chunk"], backend=backend)
    x64, y64 = x.detach().double().requires_grad_(True), y.detach().double().requires_grad_(True)
    expected = nt.reference.chunked_attention(x64, y64, perm, draw["chunk"])
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert_close("out", out, expected, 1e-5)
    dx, dy = torch.autograd.grad(out, (x, y), grad_out)
    dx64, dy64 = torch.autograd.grad(expected, (x64, y64), grad_out.double())
    assert_close("dy", dy, dy64, 1e-5)
    if draw["length"] > 1:  # L = 1: out = y whatever x is, dx = 0
        # Large scales make the softmax peaked and dx ill-conditioned in float32: the bound is
        # twice the float32 reference's own error, or 1e-5.
        x32 = x.detach().requires_grad_(True)
        (dx32,) = torch.autograd.grad(nt.reference.chunked_attention(x32, y.detach(), perm, draw["chunk"]), x32,
                                      grad_out)
        assert_close("dx", dx, dx64, max(1e-5, 2 * rel_err(dx32, dx64)))


# ---------------------------------------------------------------------------------------
# The module: no per-call state, replication, no_grad / inference_mode


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_holds_no_per_call_state_and_replicates(backend):
    torch.manual_seed(11)
    module = nt.NonLocalSparseAttention(channels=8, n_hashes=2, chunk_size=8, backend=backend).to(DEVICE)
    image = torch.randn(2, 8, 5, 6, device=DEVICE)
    rotations = nt.random_rotations(2, 2, nt.num_buckets(30, 8), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    before = {k: v for k, v in vars(module).items() if not k.startswith("_")}
    state = {k: v.clone() for k, v in module.state_dict().items()}
    expected = module(image, rotations)
    assert {k: v for k, v in vars(module).items() if not k.startswith("_")} == before
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())
    assert not list(module.buffers())
    replica = copy.deepcopy(module)  # what DataParallel's replicate() does, per device
    assert torch.equal(replica(image, rotations), expected)
    parallel = torch.nn.DataParallel(module)  # on one device (or none) it calls the module itself
    assert torch.equal(parallel(image, rotations), expected)
    if torch.cuda.is_available():
        (replica,) = torch.nn.parallel.replicate(module, [0])
        torch.testing.assert_close(replica(image, rotations), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_under_no_grad_and_inference_mode(backend):
    torch.manual_seed(12)
    module = nt.NonLocalSparseAttention(channels=8, n_hashes=2, chunk_size=8, backend=backend).to(DEVICE)
    image = torch.randn(1, 8, 4, 5, device=DEVICE)
    rotations = nt.random_rotations(2, 2, nt.num_buckets(20, 8), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    expected = module(image, rotations)
    assert expected.requires_grad
    with torch.no_grad():
        out = module(image, rotations)
    assert not out.requires_grad and torch.equal(out, expected.detach())
    with torch.inference_mode():
        out = module(image, rotations)
    assert out.is_inference() and torch.equal(out, expected.detach())
