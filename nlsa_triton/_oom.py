"""Recognising an out-of-memory error on either device."""
from __future__ import annotations

import torch

# What torch's allocators put in the RuntimeError they raise: CUDA's "CUDA out of memory",
# the CPU allocator's "DefaultCPUAllocator: can't allocate memory" (Linux) or "not enough
# memory" (Windows), mmap's "Cannot allocate memory", and cuBLAS failing to get a workspace.
OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
                "cublas_status_alloc_failed")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch.cuda.OutOfMemoryError, Python's MemoryError, or a RuntimeError whose
    message says memory ran out."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MESSAGES)
