"""Offsets that grow with the image are computed in int64.

At 2048 x 2048 (L = 4.2M) and c = 512, a ring row times the padded width (``row *
padded_c``) or a channel times the stride of a channel-major y passes 2^31: int32 offsets
would wrap and read or write the wrong memory. Such sizes do not fit the interpreter, so
the test scales the limit instead: every int32 multiply and add the kernels execute in
Triton's interpreter is checked, and one whose result reaches 2^14 fails the test. The
problem here has L·c and ring rows x padded width above 2^14 (so every offset that grows
like them must be int64 to pass), while everything a tile holds (rows x width of one
tile, positions, chunk indices) stays below it.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from triton.runtime import interpreter

from conftest import HAS_GPU, bucket_perm, make_inputs
from nlsa_triton import _ops

pytestmark = pytest.mark.skipif(HAS_GPU, reason="checks the arithmetic of Triton's interpreter (CPU runs only)")

LIMIT = 2**14


@contextlib.contextmanager
def int32_results_over(limit: int):
    """Within the block, every interpreted int32 multiply or add whose exact result reaches
    ``limit`` in magnitude is recorded in the yielded dict: (kernel, operation) -> the
    largest such result."""
    builder = interpreter.interpreter_builder
    found: dict[tuple[str, str], int] = {}
    kernel = ["?"]
    original_run = interpreter.InterpretedFunction.run

    def run(self, *args, **kwargs):
        kernel[0] = self.__name__
        return original_run(self, *args, **kwargs)

    def checked(name, op):
        original = getattr(builder, name)

        def apply(lhs, rhs):
            if lhs.dtype.scalar.name == "int32" and rhs.dtype.scalar.name == "int32":
                exact = op(np.asarray(lhs.data, np.int64), np.asarray(rhs.data, np.int64))
                largest = int(np.abs(exact).max()) if exact.size else 0
                if largest >= limit:
                    found[kernel[0], name] = max(found.get((kernel[0], name), 0), largest)
            return original(lhs, rhs)
        return apply

    interpreter.InterpretedFunction.run = run
    builder.create_mul = checked("create_mul", np.multiply)
    builder.create_add = checked("create_add", np.add)
    try:
        yield found
    finally:
        interpreter.InterpretedFunction.run = original_run
        del builder.create_mul, builder.create_add  # back to the class's methods


def test_detector_sees_a_large_int32_product():
    x, y, _ = make_inputs(1, 300, 8, 16, seed=0)
    with int32_results_over(200) as found:
        _ops.lsh_hash(x, torch.randn(8, 1, 2))
    assert found  # positions up to 299 exceed 200


def test_every_growing_offset_is_int64():
    # L 300 at chunk 144: 720 ring rows x 64 channels = 46080, and L x c = 19200, above 2^14.
    x, y, gen = make_inputs(1, 300, 8, 64, seed=1)
    x, y = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (x, y))  # channel-major, as the module's
    perm = bucket_perm(1, 2, 300, gen).to(torch.int32)
    rotations = torch.randn(8, 2, 4, generator=gen)
    with int32_results_over(LIMIT) as found:
        _ops.lsh_sort(x, rotations)
        out, lse, _ = _ops.chunked_attention_fwd_op(x, y, perm, 144, "none", True)
        _ops.chunked_attention_bwd_op(torch.ones_like(out), x, y, perm, out, lse, 144)
    assert not found, "\n".join(f"{kernel}: int32 {op} up to {value}" for (kernel, op), value in sorted(found.items()))
