"""The Triton launchers as torch.library custom ops.

Registered ops (namespace ``nlsa_triton``):

- ``lsh_hash(x, rotations) -> codes``: spherical LSH codes (N, R, L) int64; no autograd.
- ``chunked_attention_fwd(x, y, perm, chunk_size, perm_check) -> (out, lse)``: the forward
  over every round; ``lse`` (N, L) float32 is not differentiable.
- ``chunked_attention_bwd(grad_out, x, y, perm, out, lse, chunk_size) -> (dx, dy)``.

``register_fake`` gives torch.compile / FakeTensor the output shapes, ``register_autograd``
wires the backward op to the forward op, so the Triton path runs inside
``torch.compile(fullgraph=True)`` as opaque ops and passes ``torch.library.opcheck``.
The ops run on any device the kernels run on: CUDA, or the CPU under TRITON_INTERPRET=1.

Outputs are always contiguous (the fake and the real op must agree on strides); inputs
need only unit stride in the last dimension, anything else is copied once here.

``perm_check`` is one of ``PERM_CHECKS``: "full" (every row a permutation of range(L)),
"range" (every index in [0, L)) or "none" (perm comes from ``bucket_sort`` and is a
permutation by construction). The check runs inside the op, right before the kernels read
through perm, so it stays on under torch.compile too.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _validation as v
from .buckets import chunk_layout
from .kernels import chunked_attention_fwd, lsh_hash_triton

PERM_CHECKS = ("full", "range", "none")


def _unit_last_stride(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _is_empty(x: Tensor, y: Tensor) -> bool:
    return x.shape[0] == 0 or x.shape[1] == 0 or y.shape[2] == 0


# ---------------------------------------------------------------------------------------
# lsh_hash


@torch.library.custom_op("nlsa_triton::lsh_hash", mutates_args=())
def lsh_hash(x: Tensor, rotations: Tensor) -> Tensor:
    """x (N, L, d), rotations (d, R, B // 2) -> codes (N, R, L) int64 in [0, B)."""
    n, length, _ = x.shape
    if n == 0 or length == 0:
        return torch.zeros((n, rotations.shape[1], length), device=x.device, dtype=torch.int64)
    return lsh_hash_triton(_unit_last_stride(x), rotations.contiguous())


@lsh_hash.register_fake
def _(x, rotations):
    return x.new_empty((x.shape[0], rotations.shape[1], x.shape[1]), dtype=torch.int64)


# ---------------------------------------------------------------------------------------
# chunked attention: forward


@torch.library.custom_op("nlsa_triton::chunked_attention_fwd", mutates_args=())
def chunked_attention_fwd_op(
    x: Tensor, y: Tensor, perm: Tensor, chunk_size: int, perm_check: str
) -> tuple[Tensor, Tensor]:
    """x (N, L, d), y (N, L, c), perm (N, R, L) -> out (N, L, c) in y's dtype, lse (N, L) fp32."""
    n, length, _ = x.shape
    v.check_perm_values(perm, length, perm_check)
    if _is_empty(x, y):
        return (torch.zeros(y.shape, device=y.device, dtype=y.dtype),
                torch.zeros((n, length), device=x.device, dtype=torch.float32))
    out, lse = chunked_attention_fwd(
        _unit_last_stride(x), _unit_last_stride(y), _unit_last_stride(perm), *chunk_layout(length, chunk_size)
    )
    return out.contiguous(), lse.contiguous()


@chunked_attention_fwd_op.register_fake
def _(x, y, perm, chunk_size, perm_check):
    return y.new_empty(y.shape), x.new_empty((x.shape[0], x.shape[1]), dtype=torch.float32)


# ---------------------------------------------------------------------------------------
# chunked attention: backward


def _backward_launcher():
    try:
        from .kernels.chunked_attention_bwd import chunked_attention_bwd
    except ImportError as error:  # pragma: no cover - only while the backward kernel is missing
        raise NotImplementedError(
            "the backward of chunked_attention on the Triton backend is not available "
            f"({error}); use backend='torch' to train"
        ) from error
    return chunked_attention_bwd


@torch.library.custom_op("nlsa_triton::chunked_attention_bwd", mutates_args=())
def chunked_attention_bwd_op(
    grad_out: Tensor, x: Tensor, y: Tensor, perm: Tensor, out: Tensor, lse: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """Gradients (dx, dy) of sum(grad_out * out) for out = chunked_attention(x, y, perm)."""
    if _is_empty(x, y):
        return torch.zeros_like(x, memory_format=torch.contiguous_format), torch.zeros_like(
            y, memory_format=torch.contiguous_format)
    launcher = _backward_launcher()
    dx, dy = launcher(
        _unit_last_stride(x), _unit_last_stride(y), _unit_last_stride(perm), _unit_last_stride(out),
        lse.contiguous(), _unit_last_stride(grad_out), *chunk_layout(x.shape[1], chunk_size),
    )
    return dx.to(x.dtype).contiguous(), dy.to(y.dtype).contiguous()


@chunked_attention_bwd_op.register_fake
def _(grad_out, x, y, perm, out, lse, chunk_size):
    return x.new_empty(x.shape), y.new_empty(y.shape)


def _setup_context(ctx, inputs, output):
    x, y, perm, chunk_size, _ = inputs
    out, lse = output
    ctx.save_for_backward(x, y, perm, out, lse)
    ctx.chunk_size = chunk_size
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    x, y, perm, out, lse = ctx.saved_tensors
    dx, dy = chunked_attention_bwd_op(grad_out, x, y, perm, out, lse, ctx.chunk_size)
    return (dx if ctx.needs_input_grad[0] else None, dy if ctx.needs_input_grad[1] else None,
            None, None, None)


chunked_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def chunked_attention(x: Tensor, y: Tensor, perm: Tensor, chunk_size: int, perm_check: str = "full") -> Tensor:
    """The Triton chunked attention through the registered ops (differentiable in x and y)."""
    return chunked_attention_fwd_op(x, y, perm, chunk_size, perm_check)[0]
