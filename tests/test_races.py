"""No two programs of one launch touch an element that one of them writes.

Triton's interpreter runs a launch's programs one after another (``GridExecutor`` sets
``interpreter_builder.grid_idx`` and calls the kernel once per program), so a race
between programs passes every equivalence test. Here every load and store goes through
the interpreter builder's ``create_masked_load`` / ``create_masked_store`` (plain loads,
stores and tensor-descriptor accesses all end there; atomics are traced as both), which
the test wraps to record, per program, the element addresses it reads and writes where
the mask is set. A launch fails when an element written by one program is written or
read by another: within a launch the GPU gives no order between programs.

Elements are compared by address (each buffer is read and written with one element
type). The planted kernels show the check catches a read of the neighbour's element
and a shared write, and passes a kernel whose programs keep to their own elements.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter

from conftest import HAS_GPU

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from kernel_launches import Problem, defined_kernels, run_problem  # noqa: E402

pytestmark = pytest.mark.skipif(HAS_GPU, reason="traces the programs of Triton's interpreter (CPU runs only)")


@dataclasses.dataclass
class TracedLaunch:
    kernel: str
    tensors: list[tuple[str, int, int, int]]  # (argument, first byte address, bytes, element size)
    reads: dict = dataclasses.field(default_factory=lambda: defaultdict(list), repr=False)  # program -> addresses
    writes: dict = dataclasses.field(default_factory=lambda: defaultdict(list), repr=False)

    def element(self, address: int) -> str:
        for name, start, size, element_size in self.tensors:
            if start <= address < start + size:
                return f"{name}[{(address - start) // element_size}]"
        return hex(address)

    def conflicts(self, limit: int = 5) -> list[str]:
        """Elements one program writes and another writes or reads (the first ``limit`` of each kind)."""
        written, writers = _distinct_per_program(self.writes)
        read, readers = _distinct_per_program(self.reads)
        order = np.argsort(written, kind="stable")
        written, writers = written[order], writers[order]
        shared_writes = np.flatnonzero(written[1:] == written[:-1])[:limit]
        found = [f"{self.kernel}: {self.element(int(written[i]))} written by programs {_program(writers[i])} "
                 f"and {_program(writers[i + 1])}" for i in shared_writes]
        if len(written) and len(read):
            # Each read against the (first) program that writes its element.
            position = np.minimum(np.searchsorted(written, read), len(written) - 1)
            foreign = np.flatnonzero((written[position] == read) & np.any(writers[position] != readers, axis=1))
            found += [f"{self.kernel}: {self.element(int(read[i]))} written by program "
                      f"{_program(writers[position[i]])} and read by program {_program(readers[i])}"
                      for i in foreign[:limit]]
        return found


def _program(grid_index: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in grid_index)


def _distinct_per_program(accesses: dict) -> tuple[np.ndarray, np.ndarray]:
    """(addresses, programs): each program's distinct addresses, with its grid index per row."""
    addresses = [np.unique(np.concatenate(chunks)) for chunks in accesses.values()]
    if not addresses:
        return np.zeros(0, np.uint64), np.zeros((0, 3), np.int64)
    programs = np.concatenate([np.tile(program, (len(a), 1)) for program, a in zip(accesses, addresses, strict=True)])
    return np.concatenate(addresses), programs


@contextlib.contextmanager
def tracing_memory():
    """Within the block, every interpreted launch is traced into the yielded list."""
    builder = interpreter.interpreter_builder
    launches: list[TracedLaunch] = []
    original_run = interpreter.InterpretedFunction.run
    wrapped = {name: getattr(builder, name) for name in
               ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_cas")}

    def run(self, *args, grid, warmup, **kwargs):
        bound = inspect.signature(self.fn).bind_partial(*args, **{k: v for k, v in kwargs.items()
                                                                   if k in self.arg_names})
        tensors = [(name, v.data_ptr(), v.untyped_storage().nbytes() - v.storage_offset() * v.element_size(),
                    v.element_size()) for name, v in bound.arguments.items() if isinstance(v, torch.Tensor)]
        launches.append(TracedLaunch(self.__name__, tensors))
        return original_run(self, *args, grid=grid, warmup=warmup, **kwargs)

    def record(accesses, ptrs, mask):
        selected = ptrs.data[np.broadcast_to(mask.data, ptrs.data.shape)] if mask is not None else ptrs.data
        accesses[builder.grid_idx].append(np.asarray(selected, dtype=np.uint64).ravel())

    def load(ptrs, mask, *rest):
        record(launches[-1].reads, ptrs, mask)
        return wrapped["create_masked_load"](ptrs, mask, *rest)

    def store(ptrs, value, mask, *rest):
        record(launches[-1].writes, ptrs, mask)
        return wrapped["create_masked_store"](ptrs, value, mask, *rest)

    def atomic_rmw(op, ptr, value, mask, *rest):
        record(launches[-1].reads, ptr, mask)
        record(launches[-1].writes, ptr, mask)
        return wrapped["create_atomic_rmw"](op, ptr, value, mask, *rest)

    def atomic_cas(ptr, *rest):
        record(launches[-1].reads, ptr, None)
        record(launches[-1].writes, ptr, None)
        return wrapped["create_atomic_cas"](ptr, *rest)

    interpreter.InterpretedFunction.run = run
    builder.create_masked_load, builder.create_masked_store = load, store
    builder.create_atomic_rmw, builder.create_atomic_cas = atomic_rmw, atomic_cas
    try:
        yield launches
    finally:
        interpreter.InterpretedFunction.run = original_run
        for name in wrapped:
            delattr(builder, name)  # back to the class's methods


def races(launches: list[TracedLaunch]) -> list[str]:
    return [conflict for launch in launches for conflict in launch.conflicts()]


# ---------------------------------------------------------------------------------------
# The check itself, on planted kernels


@triton.jit
def _reads_next_block_kernel(X, Y, n, BLOCK: tl.constexpr):
    """Program i copies X[iB + 1 : (i + 1)B + 1] to Y[iB : (i + 1)B]; with Y = X it reads the
    first element of the block program i + 1 writes."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    shifted = tl.load(X + offs + 1, mask=offs + 1 < n, other=0.0)
    tl.store(Y + offs, shifted, mask=offs < n)


@triton.jit
def _shared_total_kernel(X, TOTAL, n, BLOCK: tl.constexpr):
    """Every program stores its block's sum to the same element."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(TOTAL, tl.sum(tl.load(X + offs, mask=offs < n, other=0.0), axis=0))


def test_read_of_the_next_programs_element_is_a_race():
    x = torch.arange(20, dtype=torch.float32)
    with tracing_memory() as launches:
        _reads_next_block_kernel[(triton.cdiv(20, 4),)](x, x, 20, BLOCK=4)
    found = races(launches)
    assert found and all("_reads_next_block_kernel: X[" in f and "read by program" in f for f in found), found


def test_shared_write_is_a_race():
    x, total = torch.arange(20, dtype=torch.float32), torch.zeros(1)
    with tracing_memory() as launches:
        _shared_total_kernel[(5,)](x, total, 20, BLOCK=4)
    found = races(launches)
    assert any("TOTAL[0] written by programs" in f for f in found), found


def test_programs_on_their_own_elements_pass():
    x, y = torch.arange(20, dtype=torch.float32), torch.zeros(20)
    with tracing_memory() as launches:
        _reads_next_block_kernel[(triton.cdiv(20, 4),)](x, y, 20, BLOCK=4)
    assert len(launches) == 1 and launches[0].writes and not races(launches)


# ---------------------------------------------------------------------------------------
# The package's hash, forward and backward

# fp32. Two images at chunk 16: several chunks with padding, one chunk, two chunks (each
# chunk its own neighbour twice). One image at chunk 144 with padding, c over two channel
# tiles of the forward and three rounds (a middle round reads and writes the running sums).
PROBLEMS = {
    "several chunks": Problem("several chunks", 2, 16 * 5 + 7, 8, 24, 2, 16, "fp32", False),
    "one chunk": Problem("one chunk", 2, 12, 8, 24, 2, 16, "fp32", False),
    "two chunks": Problem("two chunks", 2, 16 + 9, 8, 24, 2, 16, "fp32", False),
    "channel tiles": Problem("channel tiles", 1, 144 * 2 + 12, 12, 128, 3, 144, "fp32", False),
}


@pytest.fixture(scope="module")
def traced():
    found = {}
    for name, problem in PROBLEMS.items():
        with tracing_memory() as launches:
            run_problem(problem)
        found[name] = launches
    return found


def test_every_kernel_is_traced(traced):
    traced_kernels = {launch.kernel for launches in traced.values() for launch in launches}
    assert {kernel.__name__ for kernel in defined_kernels()} <= traced_kernels


@pytest.mark.parametrize("problem", PROBLEMS)
def test_no_program_touches_what_another_writes(traced, problem):
    found = races(traced[problem])
    assert not found, f"{PROBLEMS[problem].label}:\n" + "\n".join(found)
