"""The Triton launchers as torch.library custom ops.

Registered ops (namespace ``nlsa_triton``):

- ``lsh_hash(x, rotations) -> codes``: spherical LSH codes (N, R, L) int64; no autograd.
- ``lsh_sort(x, rotations) -> perm``: the stable sort of those codes, (N, R, L) int32, in
  two launches (the hash writes one-byte codes and per-block bucket counts, a counting
  sort places every position); what ``nlsa`` runs. No autograd.
- ``chunked_attention_fwd(x, y, perm, chunk_size, perm_check, keep_fp32_out) -> (out, lse,
  out_fp32)``: the forward over every round; ``lse`` (N, L) float32 and ``out_fp32`` (the
  output before rounding to a half dtype, saved for the backward; empty unless asked for
  with half inputs) are not differentiable.
- ``chunked_attention_bwd(grad_out, x, y, perm, out, lse, chunk_size) -> (dx, dy)``: first
  order only; differentiating it again raises a RuntimeError that says so.

``register_fake`` gives torch.compile / FakeTensor the output shapes, ``register_autograd``
wires the backward op to the forward op, so the Triton path runs inside
``torch.compile(fullgraph=True)`` as opaque ops and passes ``torch.library.opcheck``.
The ops run on any device the kernels run on: CUDA, or the CPU under TRITON_INTERPRET=1.

Outputs are always contiguous (the fake and the real op must agree on strides). x, y and
grad_out are read through their strides, never copied (the module's convolutions give
channel-major views); perm and rotations need unit stride in the last dimension (else
they are copied here).

``perm_check`` is the perm check to run, one of ``_validation.PERM_CHECKS``: "full" (every
row a permutation of range(L)), "range" (every index in [0, L)) or "none" (perm comes from
``bucket_sort`` and is a permutation by construction). The check runs inside the op, right
before the kernels read through perm, so it stays on under torch.compile too.
"""
# No ``from __future__ import annotations``: custom_op reads the schema from the annotations,
# and older torch versions do not evaluate string annotations.
import contextlib

import torch
from torch import Tensor

from . import _validation as v
from ._backend import TRITON_MISSING
from .chunks import chunk_layout

# Without triton (it has wheels for Linux only) the ops are still registered, since their
# schemas and fakes need no kernel, but resolve_backend never sends a call to them.
if TRITON_MISSING is None:
    from .kernels import HASH_BLOCK_L, chunked_attention_bwd, chunked_attention_fwd, counting_sort, lsh_hash_triton


# Device types whose launches need the tensor's device made current (a test adds "cpu").
GUARDED_DEVICE_TYPES = ("cuda",)


def _on_device(t: Tensor):
    """Triton launches on the current device: make t's device current for the launch, so that
    tensors on cuda:1 work while the current device is 0."""
    if t.device.type in GUARDED_DEVICE_TYPES:
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


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
    with _on_device(x):
        return lsh_hash_triton(x, _unit_last_stride(rotations))


@lsh_hash.register_fake
def _(x, rotations):
    return x.new_empty((x.shape[0], rotations.shape[1], x.shape[1]), dtype=torch.int64)


@torch.library.custom_op("nlsa_triton::lsh_sort", mutates_args=())
def lsh_sort(x: Tensor, rotations: Tensor) -> Tensor:
    """x (N, L, d), rotations (d, R, B // 2) with B <= 128 -> perm (N, R, L) int32: the stable
    argsort of ``lsh_hash(x, rotations)`` along L."""
    n, length, _ = x.shape
    if rotations.shape[2] > 64:
        raise ValueError(f"lsh_sort takes at most 128 buckets (rotations (d, R, B // 2) with B // 2 <= 64), "
                         f"got rotations of shape {tuple(rotations.shape)}")
    if n == 0 or length == 0:
        return torch.empty((n, rotations.shape[1], length), device=x.device, dtype=torch.int32)
    with _on_device(x):
        codes, hist = lsh_hash_triton(x, _unit_last_stride(rotations), codes_dtype=torch.int8, histogram=True)
        return counting_sort(codes, hist, HASH_BLOCK_L)


@lsh_sort.register_fake
def _(x, rotations):
    return x.new_empty((x.shape[0], rotations.shape[1], x.shape[1]), dtype=torch.int32)


# ---------------------------------------------------------------------------------------
# chunked attention: forward


def _keeps_fp32_out(y: Tensor, keep_fp32_out: bool) -> bool:
    return keep_fp32_out and y.dtype != torch.float32


@torch.library.custom_op("nlsa_triton::chunked_attention_fwd", mutates_args=())
def chunked_attention_fwd_op(
    x: Tensor, y: Tensor, perm: Tensor, chunk_size: int, perm_check: str, keep_fp32_out: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """x (N, L, d), y (N, L, c), perm (N, R, L) -> out (N, L, c) in y's dtype, lse (N, L) fp32,
    out_fp32 (N, L, c) fp32 when kept, else empty."""
    n, length, _ = x.shape
    v.check_perm_values(perm, length, perm_check)
    keep = _keeps_fp32_out(y, keep_fp32_out)
    if _is_empty(x, y):
        return (torch.zeros(y.shape, device=y.device, dtype=y.dtype),
                torch.zeros((n, length), device=x.device, dtype=torch.float32),
                torch.zeros(y.shape if keep else (0,), device=y.device, dtype=torch.float32))
    with _on_device(x):
        out, lse, out_fp32 = chunked_attention_fwd(
            x, y, _unit_last_stride(perm), *chunk_layout(length, chunk_size), keep_fp32_out=keep,
        )
    if out_fp32 is None:
        out_fp32 = torch.empty((0,), device=y.device, dtype=torch.float32)
    return out, lse, out_fp32


@chunked_attention_fwd_op.register_fake
def _(x, y, perm, chunk_size, perm_check, keep_fp32_out):
    kept = y.shape if _keeps_fp32_out(y, keep_fp32_out) else (0,)
    return (y.new_empty(y.shape), x.new_empty((x.shape[0], x.shape[1]), dtype=torch.float32),
            y.new_empty(kept, dtype=torch.float32))


# ---------------------------------------------------------------------------------------
# chunked attention: backward


@torch.library.custom_op("nlsa_triton::chunked_attention_bwd", mutates_args=())
def chunked_attention_bwd_op(
    grad_out: Tensor, x: Tensor, y: Tensor, perm: Tensor, out: Tensor, lse: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """Gradients (dx, dy) of sum(grad_out * out) for out = chunked_attention(x, y, perm)."""
    if _is_empty(x, y):
        return torch.zeros_like(x, memory_format=torch.contiguous_format), torch.zeros_like(
            y, memory_format=torch.contiguous_format)
    with _on_device(x):
        return chunked_attention_bwd(
            x, y, _unit_last_stride(perm), out, lse.contiguous(), grad_out, *chunk_layout(x.shape[1], chunk_size),
        )


@chunked_attention_bwd_op.register_fake
def _(grad_out, x, y, perm, out, lse, chunk_size):
    return x.new_empty(x.shape), y.new_empty(y.shape)


def _setup_context(ctx, inputs, output):
    x, y, perm, chunk_size, _, _ = inputs
    out, lse, out_fp32 = output
    ctx.save_for_backward(x, y, perm, out_fp32 if out_fp32.numel() else out, lse)
    ctx.chunk_size = chunk_size
    ctx.mark_non_differentiable(lse, out_fp32)
    # lse and out_fp32 get no gradient: without this autograd would fill a zero one for each.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, _grad_lse, _grad_out_fp32):
    if grad_out is None:  # out itself was not used
        return None, None, None, None, None, None
    x, y, perm, out, lse = ctx.saved_tensors
    dx, dy = chunked_attention_bwd_op(grad_out, x, y, perm, out, lse, ctx.chunk_size)
    return (dx if ctx.needs_input_grad[0] else None, dy if ctx.needs_input_grad[1] else None,
            None, None, None, None)


chunked_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


DOUBLE_BACKWARD_MESSAGE = (
    "double backward (a gradient of a gradient) of chunked_attention / nlsa is not supported "
    "on the Triton backend: its backward runs Triton kernels that autograd cannot "
    "differentiate; use backend='torch' for higher-order gradients"
)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)


# The backward is first-order: differentiating its outputs (create_graph=True, then a
# second backward) fails with a message that says so and names the way out.
chunked_attention_bwd_op.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


def chunked_attention(x: Tensor, y: Tensor, perm: Tensor, chunk_size: int, perm_check: str = "full") -> Tensor:
    """The Triton chunked attention through the registered ops (differentiable in x and y).

    Half-precision inputs that will be differentiated keep the fp32 output for the backward.
    """
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    return chunked_attention_fwd_op(x, y, perm, chunk_size, perm_check, needs_grad)[0]
