"""Choosing a backend (docs/semantics.md §8); autocast is in ``_autocast``.

Backends (``backend=`` of every public function and module):

- ``"triton"``: the Triton kernels (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1).
- ``"torch"``: ``nlsa_triton.streaming``, the same function in device-agnostic torch ops,
  streamed a hash round and a block of chunks at a time (O(N·L·c) extra memory).
- ``"reference"``: ``nlsa_triton.reference``, NLSN's algorithm step by step, every
  intermediate materialised (the oracle the tests hold the others to).
- ``"auto"`` (default): "triton" where the kernels run, "torch" everywhere else (CPU, MPS,
  any other device, GPUs older than sm_80, float64, and wherever triton is not installed).
"""
from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch", "reference")


def _triton_missing() -> str | None:
    """Why the Triton backend cannot run on this install, or None when triton imports.

    Triton publishes wheels for Linux only, so the package depends on it only there; on
    macOS and Windows (or any install without it) 'auto' runs the torch backend.
    """
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return (f"backend='triton' needs the triton package, which cannot be imported here "
                f"({error}); triton publishes wheels for Linux only. Use backend='auto' or 'torch'")
    return None


TRITON_MISSING = _triton_missing()


def _kernels_interpreted() -> bool:
    """Whether the kernels were defined under TRITON_INTERPRET=1 (triton.jit reads it then)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction

        from .kernels.lsh_hash import _lsh_hash_kernel
    except ImportError:  # pragma: no cover - other Triton layouts
        return os.environ.get("TRITON_INTERPRET", "0") == "1"
    return isinstance(_lsh_hash_kernel, InterpretedFunction)


_INTERPRETED = _kernels_interpreted()


def interpreter_enabled() -> bool:
    """True when the kernels run in Triton's interpreter (on CPU tensors)."""
    return _INTERPRETED


# The kernels' tile tables (kernels/tile_tables.py) cover sm_80 and later; compiled for
# sm_75 (T4, RTX 20xx) they spill and outgrow its shared memory (docs/gpus.md).
MIN_CAPABILITY = (8, 0)


def unserved_card(capability: tuple[int, int], name: str) -> str | None:
    """Why backend='triton' cannot run on a GPU of this compute capability, or None."""
    if tuple(capability) >= MIN_CAPABILITY:
        return None
    major, minor = capability
    return (f"backend='triton' needs a GPU of compute capability 8.0 or later (A100, RTX 30xx and later); "
            f"x is on {name} (sm_{major}{minor}), where the kernels spill registers and outgrow the 64 KB of "
            "shared memory per block (docs/gpus.md); use backend='torch' or 'auto'")


_UNSERVED: dict[int, str | None] = {}


# Read once per device, eagerly even while torch.compile traces the caller.
@torch.compiler.assume_constant_result
def _unserved_device(index: int) -> str | None:
    if index not in _UNSERVED:
        _UNSERVED[index] = unserved_card(torch.cuda.get_device_capability(index), torch.cuda.get_device_name(index))
    return _UNSERVED[index]


def _card_problem(x: torch.Tensor) -> str | None:
    return _unserved_device(x.device.index) if x.is_cuda else None


def check_backend(backend) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str, x: torch.Tensor, *, uses_dot: bool = True) -> str:
    """The backend a call runs: 'triton', 'torch' or 'reference'.

    'auto' is Triton for CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), else
    'torch' (the streamed pure-torch implementation); 'torch' and 'reference' run anywhere.
    GPUs older than sm_80 run 'torch' under 'auto' and refuse 'triton', saying why.

    The attention kernels (``uses_dot``) take float16, bfloat16 and float32; 'auto' sends
    float64 to torch and 'triton' refuses it. Triton's interpreter computes ``tl.dot`` of
    bfloat16 operands on their raw bit patterns (triton-lang/triton#11584: "the
    interpreter doesn't support bf16"), so there bfloat16 is handled the same way.
    """
    check_backend(backend)
    triton_runs = TRITON_MISSING is None and (x.is_cuda or (_INTERPRETED and x.device.type == "cpu"))
    card_problem = _card_problem(x) if triton_runs else None
    unsupported = None
    if uses_dot and x.dtype == torch.float64:
        unsupported = (
            f"backend='triton' takes float16, bfloat16 or float32 x and y, got {x.dtype}; "
            "use backend='torch' (or 'auto') for float64"
        )
    elif uses_dot and x.dtype == torch.bfloat16 and not x.is_cuda:
        unsupported = (
            "backend='triton' cannot take bfloat16 x and y in Triton's CPU interpreter "
            "(TRITON_INTERPRET=1: its tl.dot mis-computes bfloat16); use a GPU, float16 / float32, "
            "or backend='torch' / 'auto'"
        )
    if backend == "auto":
        return "triton" if triton_runs and unsupported is None and card_problem is None else "torch"
    if backend == "triton" and TRITON_MISSING is not None:
        raise RuntimeError(TRITON_MISSING)
    if backend == "triton" and not triton_runs:
        raise ValueError(
            f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the kernels on "
            f"the CPU), got x on {x.device}; use backend='torch' or 'auto'"
        )
    if backend == "triton" and card_problem is not None:
        raise ValueError(card_problem)
    if backend == "triton" and unsupported is not None:
        raise TypeError(unsupported)
    return backend
