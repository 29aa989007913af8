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
from host_time import TABLE2, call, launch_counter, table2_inputs  # noqa: E402

FORWARD_LAUNCHES = 15
FORWARD_BACKWARD_LAUNCHES = 35


@pytest.fixture(autouse=True)
def no_poison(monkeypatch):
    # conftest's poisoning fills every allocation: a fill the package does not make.
    monkeypatch.undo()


def test_forward_launches():
    x, y, rotations = table2_inputs()
    with launch_counter() as found:
        call(x, y, rotations)
    assert found.total <= FORWARD_LAUNCHES, found


def test_forward_backward_launches():
    x, y, rotations = table2_inputs(requires_grad=True)
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
