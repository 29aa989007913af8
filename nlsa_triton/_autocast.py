"""Autocast: attention runs in autocast's lower-precision dtype, accumulating in float32.

Every public function casts its inputs with ``autocast_inputs``; the pure-torch paths then
compute with autocast turned off (``autocast_off``), in float32 as the kernels do.
"""
from __future__ import annotations

import contextlib

import torch


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type``, or None outside autocast."""
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def autocast_inputs(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Under autocast, float32 / float16 / bfloat16 tensors become the autocast dtype.

    Attention is in autocast's lower-precision list (like scaled_dot_product_attention):
    the inputs are cast, accumulation stays float32 inside the kernels (and the torch
    reference), the output has the autocast dtype. float64 is left alone, as autocast does.
    Non-tensors pass through untouched for the validation to report.
    """
    first = next((t for t in tensors if isinstance(t, torch.Tensor)), None)
    if first is None:
        return tensors
    dtype = autocast_dtype(first.device.type)
    if dtype is None:
        return tensors
    return tuple(
        t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in (torch.float32, torch.float16, torch.bfloat16)
        else t
        for t in tensors
    )


def autocast_off(device_type: str):
    """A context that turns autocast off for ``device_type`` while it is on (else a no-op),
    so the reference computes in float32 as the kernels do."""
    if autocast_dtype(device_type) is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)
