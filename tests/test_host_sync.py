"""No host synchronisation on the module path (forward and backward, Triton backend).

A host synchronisation stalls the host until the GPU catches up and breaks CUDA-graph
capture. Watched while ``NonLocalSparseAttention`` runs forward and backward: the aten ops
that read device data back or whose output size depends on data (``_local_scalar_dense``
behind ``.item()``, ``bool()``, ``int()``; ``nonzero``, ``masked_select``, ``unique``, ...,
copies to the CPU), seen by a ``TorchDispatchMode`` that also looks inside the package's
custom ops, and the Tensor methods that do it without the dispatcher on CPU tensors
(``tolist``, ``numpy``, ``cpu``, ``item``, ``__bool__``, ...). A call counts when the
innermost frame outside torch is the package's; calls from Triton's frames (its
interpreter reads CPU tensors) do not count, since a compiled launch reads nothing back.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch
from torch._library import custom_ops
from torch.utils._python_dispatch import TorchDispatchMode

import nlsa_triton as nt
from conftest import DEVICE
from nlsa_triton import _validation

aten = torch.ops.aten
SYNCING_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
               aten.unique_consecutive.default, aten._unique2.default, aten.unique_dim.default,
               aten.repeat_interleave.Tensor, aten.bincount.default, aten.equal.default}
SYNCING_METHODS = ("tolist", "numpy", "cpu", "item", "__bool__", "__int__", "__float__", "__index__")

PACKAGE_DIRS = tuple(str(Path(module.__file__).resolve().parent) for module in (nt, nt.kernels))
TORCH_DIR = str(Path(torch.__file__).resolve().parent)
HERE = str(Path(__file__).resolve())


def _package_caller() -> str | None:
    """'file:line' of the package frame that made the current call, or None when the
    innermost frame outside torch (and this file) is not the package's."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = str(Path(frame.f_code.co_filename).resolve())
        if not filename.startswith(TORCH_DIR) and filename != HERE:
            if filename.startswith(PACKAGE_DIRS):
                return f"{filename}:{frame.f_lineno}"
            return None
        frame = frame.f_back
    return None


class _SyncingOps(TorchDispatchMode):
    def __init__(self, found: list[str]):
        super().__init__()
        self.found = found

    @staticmethod
    def _copies_to_cpu(func, args, kwargs) -> bool:
        from_device = any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args)
        if func == aten._to_copy.default:
            return from_device and kwargs.get("device") == torch.device("cpu")
        return func == aten.copy_.default and from_device and args[0].device.type == "cpu"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "nlsa_triton":
            with self:
                return custom_ops.OPDEFS[func._schema.name]._init_fn(*args, **kwargs)
        if func in SYNCING_OPS or self._copies_to_cpu(func, args, kwargs):
            caller = _package_caller()
            if caller:
                self.found.append(f"{func} from {caller}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def watching_syncs():
    """Within the block, host synchronisations made from the package's frames are recorded
    in the yielded list."""
    found: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING_METHODS}

    def watched(name):
        method = originals[name]

        def call(self, *args, **kwargs):
            caller = _package_caller()
            if caller:
                found.append(f"Tensor.{name} from {caller}")
            return method(self, *args, **kwargs)
        return call

    for name in SYNCING_METHODS:
        setattr(torch.Tensor, name, watched(name))
    try:
        with _SyncingOps(found):
            yield found
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def test_watcher_catches_a_sync_in_the_package():
    perm = torch.arange(6, device=DEVICE).reshape(1, 1, 6)
    with watching_syncs() as found:
        _validation.check_perm_values(perm, 6, "full")  # one bool() of a device tensor
    assert found and all("_validation.py" in f for f in found), found


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_module_forward_and_backward_do_not_synchronise(dtype):
    torch.manual_seed(0)
    module = nt.NonLocalSparseAttention(channels=16, n_hashes=2, chunk_size=16, backend="triton").to(DEVICE, dtype)
    inp = torch.randn(2, 16, 7, 9, device=DEVICE, dtype=dtype, requires_grad=True)
    grad = torch.randn(inp.shape, device=DEVICE, dtype=dtype)
    with watching_syncs() as found:
        module(inp).backward(grad)
    assert not found, "host synchronisations on the module path:\n" + "\n".join(found)
    assert inp.grad is not None and torch.isfinite(inp.grad).all()
