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

_ALLOCATORS = {"empty": torch.empty, "empty_like": torch.empty_like, "empty_strided": torch.empty_strided}
_new_empty = torch.Tensor.new_empty


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        return t.fill_(float("nan"))
    if t.dtype in (torch.int8, torch.int32, torch.int64):
        return t.fill_(-1)
    return t


def _poisoned(allocate):
    return lambda *a, **k: _poison(allocate(*a, **k))


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """Every uninitialised allocation (torch.empty, empty_like, empty_strided,
    Tensor.new_empty: the outputs and the kernels' staging buffers) starts as NaN (floats)
    or -1 (integers), so a kernel that leaves an element unwritten, or reads one it never
    wrote, fails the comparison."""
    for name, allocate in _ALLOCATORS.items():
        monkeypatch.setattr(torch, name, _poisoned(allocate))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: _poison(_new_empty(self, *a, **k)))


@pytest.fixture
def device() -> str:
    return DEVICE


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; NaN anywhere gives NaN (which fails every assert)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float, block_rows: int = 16,
                 block_factor: float = 4.0) -> None:
    """``actual`` within ``tol`` of ``expected`` in relative norm overall, and within
    ``block_factor * tol`` on every block of ``block_rows`` rows (the second-to-last
    dimension), so that an error confined to a few rows cannot hide in the average."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = rel_err(actual, expected)
    assert err < tol, f"{name}: relative error {err:.3g} >= {tol:.3g}"
    rows_a = actual.detach().cpu().double().reshape(-1, actual.shape[-1])
    rows_e = expected.detach().cpu().double().reshape(-1, expected.shape[-1])
    for start in range(0, rows_a.shape[0], block_rows):
        block = slice(start, start + block_rows)
        err = rel_err(rows_a[block], rows_e[block])
        assert err < block_factor * tol, (
            f"{name}: rows {start}..{start + block_rows - 1}: relative error {err:.3g} >= {block_factor * tol:.3g}")
