"""Every Triton launch runs with the tensors' device made current (``torch.cuda.device``),
so tensors on cuda:1 work while the current device is 0.

Without a second GPU (or any), the guard is checked by recording: ``torch.cuda.device`` is
replaced by a recorder, the guard is switched on for CPU tensors, and each launch (stubbed
out) notes which device was current when it was made.
"""
import pytest
import torch
from triton.runtime import interpreter

from conftest import HAS_GPU
from nlsa_triton import _ops

pytestmark = pytest.mark.skipif(HAS_GPU, reason="records the interpreter's launches (CPU runs only)")


class _RecordingDevice:
    current: list = []

    def __init__(self, device):
        self.device = torch.device(device)

    def __enter__(self):
        _RecordingDevice.current.append(self.device)

    def __exit__(self, *exc):
        _RecordingDevice.current.pop()


def test_every_launch_runs_under_the_tensors_device(monkeypatch):
    launches = []

    def run(self, *args, grid, warmup, **kwargs):
        launches.append((self.__name__, _RecordingDevice.current[-1] if _RecordingDevice.current else None))

    monkeypatch.setattr(_ops, "GUARDED_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(torch.cuda, "device", _RecordingDevice)
    monkeypatch.setattr(interpreter.InterpretedFunction, "run", run)
    x = torch.randn(1, 40, 8, requires_grad=True)
    y = torch.randn(1, 40, 16, requires_grad=True)
    rotations = torch.randn(8, 2, 1)
    perm = _ops.lsh_sort(x.detach(), rotations)
    _ops.lsh_hash(x.detach(), rotations)
    _ops.chunked_attention(x, y, perm, 16, "none").backward(torch.ones(1, 40, 16))
    assert len(launches) >= 10
    assert all(device == x.device for _, device in launches), launches
