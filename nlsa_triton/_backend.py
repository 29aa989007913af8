"""Choosing between the Triton kernels and the torch reference."""
from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """'auto' is Triton for CUDA tensors (or any tensor under TRITON_INTERPRET=1), else torch."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    triton_runs = x.is_cuda or (interpreter_enabled() and x.device.type == "cpu")
    if backend == "auto":
        return "triton" if triton_runs else "torch"
    if backend == "triton" and not triton_runs:
        raise ValueError(
            f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the kernels on "
            f"the CPU), got x on {x.device}; use backend='torch' or 'auto'"
        )
    return backend
