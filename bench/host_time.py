"""Host cost of the Triton path: device launches per call and host time per call.

Counts what a call asks the device to do and times the Python that asks, with no GPU:

- ``launch_counter()``: a context counting device launches: every Triton kernel launch
  (the launch itself is stubbed out: nothing runs, the outputs stay uninitialised) plus
  every torch op that launches work (sorts, fills, reductions, copies, casts), seen by a
  ``TorchDispatchMode``. Allocations (``empty``, ``empty_strided``, ``empty_like``),
  views and metadata do not launch anything and are not counted. The package's custom
  ops are looked into (the torch ops their launchers run are counted, not the op).
- ``main``: the host time of one ``nlsa`` forward, and of forward + backward, at Table 2
  (N 1, L 150 x 150, d 16, c 64, R 4, chunk 144) with the launches stubbed out. Triton's
  launch path runs up to the compile step as on a GPU (argument binding, specialisation,
  cache key for an sm_90 target; the compile returns no kernel, so nothing is launched).
  The tensors are CPU tensors, so a torch op that launches work on a GPU runs its work on
  the CPU here; the same call at L = 300 (same launches, negligible work) shows the host
  time without it.

Run from the repository root:  python bench/host_time.py
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator

import torch
from torch._library import custom_ops
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops that launch nothing: allocations and metadata (views are recognised by their schema).
NO_WORK = {
    aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default, aten.new_empty.default,
    aten.new_empty_strided.default, aten.detach.default, aten.alias.default, aten.lift_fresh.default,
    aten.sym_size.int, aten.sym_stride.int, aten.sym_numel.default, aten.sym_storage_offset.default,
    aten.is_same_size.default, aten.set_.source_Storage_storage_offset,
}


class WorkOps(TorchDispatchMode):
    """Counts the aten ops that launch device work, by name; looks inside the package's
    custom ops (namespace ``nlsa_triton``), whose launchers' torch ops are what runs."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "nlsa_triton":
            # Run the op's Python implementation under this mode (calling the op again
            # would dispatch it here again).
            implementation = custom_ops.OPDEFS[func._schema.name]._init_fn
            with self:
                return implementation(*args, **kwargs)
        if func not in NO_WORK and not func.is_view and not func._schema.name.startswith("prim::"):
            self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **kwargs)


class Launches:
    """What ``launch_counter`` counted: Triton launches by kernel, torch work ops by name."""

    def __init__(self):
        self.triton: Counter = Counter()
        self.torch: Counter = Counter()

    @property
    def total(self) -> int:
        return sum(self.triton.values()) + sum(self.torch.values())

    def __repr__(self) -> str:
        return f"{self.total} launches: Triton {dict(self.triton)}, torch {dict(self.torch)}"


@contextlib.contextmanager
def stubbed_triton_launches(counts: Counter) -> Iterator[None]:
    """Within the block, every Triton launch is counted in ``counts`` (by kernel name) and
    runs nothing. Interpreted kernels (TRITON_INTERPRET=1) skip the interpreter; compiled
    ones go through ``JITFunction.run`` up to the compile, for an sm_90 target."""
    from triton.runtime import driver, interpreter
    from triton.runtime.jit import JITFunction

    if os.environ.get("TRITON_INTERPRET") == "1":
        original = interpreter.InterpretedFunction.run

        def run(self, *args, grid, warmup, **kwargs):
            counts[self.__name__] += 1

        interpreter.InterpretedFunction.run = run
        try:
            yield
        finally:
            interpreter.InterpretedFunction.run = original
        return

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from kernel_launches import _TargetDriver  # noqa: E402
    from triton.backends.compiler import GPUTarget

    original_compile, previous_driver = JITFunction._do_compile, driver._active

    def no_compile(self, *args, **kwargs):
        counts[self.__name__] += 1  # returning no kernel makes run() return before launching

    driver.set_active(_TargetDriver(GPUTarget("cuda", 90, 32)))
    JITFunction._do_compile = no_compile
    try:
        yield
    finally:
        JITFunction._do_compile = original_compile
        driver.set_active(previous_driver)


@contextlib.contextmanager
def launch_counter() -> Iterator[Launches]:
    """Within the block, device launches are counted into the yielded ``Launches`` (Triton's
    stubbed out, see ``stubbed_triton_launches``)."""
    found = Launches()
    mode = WorkOps()
    mode.ops = found.torch
    with stubbed_triton_launches(found.triton), mode:
        yield found


# ---------------------------------------------------------------------------------------
# The measurement

TABLE2 = dict(n=1, length=150 * 150, d=16, c=64, rounds=4, chunk=144)


def table2_inputs(length: int = TABLE2["length"], requires_grad: bool = False, dtype: torch.dtype = torch.float32):
    import nlsa_triton as nt

    gen = torch.Generator().manual_seed(0)
    n, d, c, rounds, chunk = (TABLE2[k] for k in ("n", "d", "c", "rounds", "chunk"))
    x = torch.randn(n, length, d, generator=gen).to(dtype).requires_grad_(requires_grad)
    y = torch.randn(n, length, c, generator=gen).to(dtype).requires_grad_(requires_grad)
    rotations = nt.random_rotations(d, rounds, nt.num_buckets(length, chunk), generator=gen)
    return x, y, rotations


def call(x, y, rotations, grad_out: torch.Tensor | None = None) -> torch.Tensor:
    """One ``nlsa`` forward on the Triton path, and its backward when ``grad_out`` is given."""
    import nlsa_triton as nt

    out = nt.nlsa(x, y, n_hashes=rotations.shape[1], chunk_size=TABLE2["chunk"], rotations=rotations,
                  backend="triton")
    if grad_out is not None:
        out.backward(grad_out)
    return out


def host_time(length: int, backward: bool, repeats: int) -> float:
    """Median wall time of one call (ms), launches stubbed out."""
    x, y, rotations = table2_inputs(length, backward)
    grad_out = torch.ones_like(y) if backward else None
    times = []
    with stubbed_triton_launches(Counter()):
        for _ in range(repeats + 3):  # the first calls fill triton's and torch's caches
            x.grad = y.grad = None  # no accumulation into the previous call's gradients
            start = time.perf_counter()
            call(x, y, rotations, grad_out)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[3:])


def main() -> None:
    import nlsa_triton.functional as functional

    # The kernels' real outputs are not needed: run the Triton path on CPU tensors
    # without the interpreter (launches are stubbed out).
    functional.resolve_backend = lambda backend, x, **kwargs: "triton"
    torch.set_num_threads(1)
    for backward in (False, True):
        x, y, rotations = table2_inputs(requires_grad=backward)
        grad_out = torch.ones_like(y) if backward else None
        with launch_counter() as found:
            call(x, y, rotations, grad_out)
        label = "forward + backward" if backward else "forward"
        print(f"{label}: {found}")
        for length in (TABLE2["length"], 300):
            print(f"  host time at L = {length}: {host_time(length, backward, repeats=30):.3f} ms")


if __name__ == "__main__":
    main()
