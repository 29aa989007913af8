"""The card a launch runs on: tile tables per compute capability, fp32 precision as torch
says, and the cards the kernels do not serve (docs/gpus.md)."""
import importlib

import pytest
import torch

import nlsa_triton as nt
import nlsa_triton._backend as backend_module
from conftest import DEVICE, assert_close, bucket_perm, make_inputs
from nlsa_triton.kernels import tile_tables

# The module (the package re-exports its launcher under the same name).
fwd_module = importlib.import_module("nlsa_triton.kernels.chunked_attention_fwd")

# ---------------------------------------------------------------------------------------
# fp32 precision: torch's new API (fp32_precision, torch >= 2.9) and the legacy flag

NEW_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")


@pytest.fixture
def new_api_tf32():
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    yield
    matmul.fp32_precision = before


@pytest.fixture
def legacy_tf32():
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.skipif(not NEW_API, reason="torch < 2.9 has no fp32_precision")
def test_new_precision_api_chooses_tf32(new_api_tf32):
    # torch raises on reading the legacy flag now; the launchers must not read it.
    with pytest.raises(RuntimeError):
        torch.backends.cuda.matmul.allow_tf32  # noqa: B018
    assert tile_tables.dot_precision(torch.float32, 90) == "tf32"
    assert tile_tables.dot_precision(torch.float32, 80) == "tf32"
    # Turing has no TF32: torch computes fp32 matmuls in full precision there.
    assert tile_tables.dot_precision(torch.float32, 75) == "ieee"
    assert tile_tables.dot_precision(torch.float16, 90) == "ieee"
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    assert tile_tables.dot_precision(torch.float32, 90) == "ieee"


def test_legacy_flag_chooses_tf32(legacy_tf32):
    assert tile_tables.dot_precision(torch.float32, 90) == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = False
    assert tile_tables.dot_precision(torch.float32, 90) == "ieee"


@pytest.mark.skipif(not NEW_API, reason="torch < 2.9 has no fp32_precision")
def test_fp32_forward_runs_under_the_new_api(new_api_tf32, monkeypatch):
    """An fp32 call after ``fp32_precision = "tf32"`` runs, launched with TF32 products."""
    launched = []
    kernel = fwd_module._chunked_attention_fwd_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launched.append(kwargs["DOT_PRECISION"])
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(fwd_module, "_chunked_attention_fwd_kernel", Spy())
    x, y, gen = make_inputs(1, 40, 8, 24, seed=3)
    perm = bucket_perm(1, 2, 40, gen, n_codes=4)
    out = nt.chunked_attention(x, y, perm, 16, backend="triton")
    expected = nt.reference.chunked_attention(x.double().cpu(), y.double().cpu(), perm.cpu(), 16)
    assert launched and set(launched) == {"tf32"}
    # TF32 keeps 10 mantissa bits (the interpreter may compute in full fp32).
    assert_close("out", out.cpu(), expected, 5e-3)


# ---------------------------------------------------------------------------------------
# Tile tables per card


@pytest.mark.parametrize("capability, card", [((9, 0), 90), ((8, 0), 80), ((8, 7), 80), ((8, 6), 86), ((8, 9), 86),
                                              ((12, 0), 86)])
def test_card_family(capability, card):
    assert tile_tables.family(capability) == card


def test_as_card_overrides_the_device():
    assert tile_tables.card_of(torch.device("cpu")) == tile_tables.DEFAULT_CARD
    with tile_tables.as_card(86):
        assert tile_tables.card_of(torch.device("cpu")) == 86
        with tile_tables.as_card(80):
            assert tile_tables.card_of(torch.device("cpu")) == 80
        assert tile_tables.card_of(torch.device("cpu")) == 86
    assert tile_tables.card_of(torch.device("cpu")) == tile_tables.DEFAULT_CARD


# Interpreter runs of the tiles only the smaller cards pick (each launch's compiled
# resources are tests/test_triton_compile.py's): chunk 40 makes 32-row tiles, d 100 and
# c 300 pad to 128 and 512 (rows of w = 640), so sm_86 takes 32-row forward tiles with
# 16-row steps (fp32), 16-row dq and dk/dv tiles (fp32), and 32-row dq tiles with 16-row
# steps and 16-row dk/dv tiles (fp16): tiles the default card's table seldom picks.
@pytest.mark.skipif(DEVICE != "cpu", reason="a GPU runs its own card's tiles")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_small_card_tiles_match_the_reference(dtype):
    card = 86
    gen = torch.Generator().manual_seed(card)
    x = (torch.randn(1, 81, 100, generator=gen) * 0.2).to(dtype)
    y = torch.randn(1, 81, 300, generator=gen).to(dtype)
    grad_out = torch.randn(1, 81, 300, generator=gen).to(dtype)
    perm = bucket_perm(1, 2, 81, gen)
    xt, yt = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    with tile_tables.as_card(card):
        out = nt.chunked_attention(xt, yt, perm, 40, backend="triton")
        out.backward(grad_out)
    xr, yr = x.double().requires_grad_(True), y.double().requires_grad_(True)
    expected = nt.reference.chunked_attention(xr, yr, perm, 40)
    expected.backward(grad_out.double())
    tol = 2e-6 if dtype == torch.float32 else 1e-3
    assert_close("out", out.double(), expected, tol)
    assert_close("dx", xt.grad.double(), xr.grad, 5 * tol)
    assert_close("dy", yt.grad.double(), yr.grad, 5 * tol)


# ---------------------------------------------------------------------------------------
# Cards the kernels do not serve


def test_cards_before_sm80_are_not_served():
    assert backend_module.unserved_card((8, 0), "NVIDIA A100") is None
    assert backend_module.unserved_card((9, 0), "NVIDIA H100") is None
    message = backend_module.unserved_card((7, 5), "Tesla T4")
    assert "Tesla T4 (sm_75)" in message and "backend='torch' or 'auto'" in message


def test_auto_takes_torch_and_triton_says_why_on_an_unserved_card(monkeypatch):
    monkeypatch.setattr(backend_module, "_card_problem", lambda x: "the card's reason")
    x, y, gen = make_inputs(1, 40, 8, 24, seed=4)
    perm = bucket_perm(1, 2, 40, gen)
    assert backend_module.resolve_backend("auto", x) == "torch"
    with pytest.raises(ValueError, match="the card's reason"):
        nt.chunked_attention(x, y, perm, 16, backend="triton")
    expected = nt.chunked_attention(x, y, perm, 16, backend="torch")
    assert torch.equal(nt.chunked_attention(x, y, perm, 16), expected)
