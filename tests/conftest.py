"""Test set-up: real Triton kernels everywhere, unwritten outputs poisoned.

Without a GPU, TRITON_INTERPRET=1 must be set before triton is imported (triton.jit
reads it when a kernel is defined), so the kernels run in Triton's interpreter on CPU.
With a GPU the same tests run compiled.
"""
import os

import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if HAS_GPU else "cpu"

_empty, _empty_like = torch.empty, torch.empty_like


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        return t.fill_(float("nan"))
    if t.dtype in (torch.int32, torch.int64):
        return t.fill_(-1)
    return t


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """Every torch.empty / torch.empty_like starts as NaN (floats) or -1 (indices), so a
    kernel that leaves an output element unwritten fails the comparison."""
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(_empty_like(*a, **k)))


@pytest.fixture
def device() -> str:
    return DEVICE


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; NaN anywhere gives NaN (which fails every assert)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()
