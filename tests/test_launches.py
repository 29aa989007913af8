"""Device launches per call at Table 2 (N 1, L 150 x 150, d 16, c 64, R 4, chunk 144).

``bench/host_time.launch_counter`` counts Triton launches (stubbed out: nothing runs) and
the torch ops that launch device work (sorts, fills, reductions, copies), not allocations
or views. Each Triton launch costs 30-40 us of Python on the host, about a forward's GPU
time at this size, so the count is what sets the host time (bench/NOTES.md).
"""
import sys
from pathlib import Path

import pytest
import torch

import nlsa_triton as nt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from host_time import call, launch_counter, table2_inputs  # noqa: E402

# Issue 16's targets are 6 and 16 (before: 15 and 35, bench/NOTES.md). The forward: hash,
# counting sort, staging, the fast and the exact attention launch, merge; the backward:
# staging, dq, dk/dv, fold.
FORWARD_LAUNCHES = 6
FORWARD_BACKWARD_LAUNCHES = 10
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])


@pytest.fixture(autouse=True)
def no_poison(monkeypatch):
    # conftest's poisoning fills every allocation: a fill the package does not make.
    monkeypatch.undo()


@DTYPES
def test_forward_launches(dtype):
    x, y, rotations = table2_inputs(dtype=dtype)
    with launch_counter() as found:
        call(x, y, rotations)
    assert found.total <= FORWARD_LAUNCHES, found


@DTYPES
def test_forward_backward_launches(dtype):
    x, y, rotations = table2_inputs(requires_grad=True, dtype=dtype)
    grad_out = torch.ones_like(y)
    with launch_counter() as found:
        call(x, y, rotations, grad_out)
    assert found.total <= FORWARD_BACKWARD_LAUNCHES, found


def test_counter_counts_torch_work_and_triton_launches():
    """The counter sees a Triton launch and torch's work ops, and skips allocations and views."""
    x, _, rotations = table2_inputs(length=300)
    with launch_counter() as found:
        torch.empty(5).view(-1)
        torch.zeros(3).sum()
        nt.lsh_hash(x, rotations, backend="triton")
    assert dict(found.triton) == {"_lsh_hash_kernel": 1}
    assert dict(found.torch) == {"zeros": 1, "sum": 1}


def test_module_copies_nothing():
    """NonLocalSparseAttention, forward and backward: the kernels read the convolutions'
    channel-major outputs (and the strided output gradient) through their strides, so the
    only torch work is the module's own (convolutions, the rotations, the residual)."""
    module = nt.NonLocalSparseAttention(channels=16, n_hashes=2, chunk_size=16, backend="triton")
    inp = torch.randn(2, 16, 7, 9, requires_grad=True)
    grad = torch.randn(inp.shape)
    with launch_counter() as found:
        module(inp).backward(grad)
    assert set(found.torch) <= {"convolution", "convolution_backward", "randn", "mul", "add"}, found
    assert found.total <= FORWARD_BACKWARD_LAUNCHES + 10, found
