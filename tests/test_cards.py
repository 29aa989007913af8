"""The card a launch runs on: tile tables per compute capability, fp32 precision as torch
says, and the cards the kernels do not serve (docs/gpus.md)."""
import importlib

import pytest
import torch

import nlsa_triton as nt
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
