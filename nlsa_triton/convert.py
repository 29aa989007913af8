"""``convert_nlsa``: swap the NLSN authors' ``NonLocalSparseAttention`` blocks in any model
for this package's, the way ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` swaps
batch norms.

Many networks carry a copy of the authors' block (NLSN itself, Wavelettention's HAT with
NLSA blocks, PCS, Semi-UIR...). A block is recognised by its class name and NLSN's
attributes (``conv_match``, ``conv_assembly``, ``n_hashes``, ``chunk_size``,
``reduction``, ``res_scale``), with its convolutions either in EDSR's ``BasicBlock`` (a
Sequential: keys ``conv_match.0.weight``) or plain ``nn.Conv2d`` (``conv_match.weight``).
The replacement keeps the original convolution modules themselves, so the model's
state_dict keys, its parameters (and an optimizer holding them), their device, dtype and
``requires_grad`` are unchanged; only the attention runs here.
"""
from __future__ import annotations

from torch import nn

from .modules import NonLocalSparseAttention

__all__ = ["convert_nlsa", "AUTHORS_ATTRIBUTES"]

#: What the authors' block has: the attributes a candidate must carry to be converted.
AUTHORS_ATTRIBUTES = ("conv_match", "conv_assembly", "n_hashes", "chunk_size", "reduction", "res_scale")


def _single_conv(module: nn.Module, what: str, where: str) -> nn.Conv2d:
    """The one convolution of ``conv_match``/``conv_assembly``: the module itself, or the
    only layer of a Sequential (EDSR's BasicBlock with bn=False, act=None)."""
    conv = module[0] if isinstance(module, nn.Sequential) and len(module) == 1 else module
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"convert_nlsa: {where}.{what} is {type(module).__name__}, not one nn.Conv2d "
                         "(or a Sequential holding one) as in NLSN's block; left as it is would be wrong")
    k = conv.kernel_size
    same = (conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 and k[0] == k[1]
            and k[0] % 2 == 1 and conv.padding == (k[0] // 2, k[0] // 2) and conv.padding_mode == "zeros")
    if not same:
        raise ValueError(f"convert_nlsa: {where}.{what} is {conv}; NLSN's is an odd square kernel, stride 1, "
                         "padding kernel // 2 (the map keeps its size)")
    return conv


def _is_authors_block(module: nn.Module, class_names: tuple[str, ...]) -> bool:
    return (type(module).__name__ in class_names and not isinstance(module, NonLocalSparseAttention)
            and all(hasattr(module, a) for a in AUTHORS_ATTRIBUTES))


def _converted(block: nn.Module, where: str, backend: str) -> NonLocalSparseAttention:
    match = _single_conv(block.conv_match, "conv_match", where)
    assembly = _single_conv(block.conv_assembly, "conv_assembly", where)
    channels = assembly.in_channels
    if (match.in_channels, assembly.out_channels, assembly.kernel_size) != (channels, channels, (1, 1)):
        raise ValueError(f"convert_nlsa: {where}: conv_match {match} and conv_assembly {assembly} do not have "
                         "NLSN's shapes (C -> C // reduction, and a 1x1 C -> C)")
    if match.out_channels * block.reduction != channels:
        raise ValueError(f"convert_nlsa: {where}: conv_match has {match.out_channels} output channels, "
                         f"not channels // reduction = {channels} // {block.reduction}")
    new = NonLocalSparseAttention(
        channels=channels, n_hashes=block.n_hashes, chunk_size=block.chunk_size, reduction=block.reduction,
        k_size=match.kernel_size[0], res_scale=block.res_scale, backend=backend,
    )
    # The original modules, not copies: same keys, same Parameter objects.
    new.conv_match, new.conv_assembly = block.conv_match, block.conv_assembly
    return new.train(block.training)


def convert_nlsa(
    module: nn.Module,
    *,
    backend: str = "auto",
    class_names: tuple[str, ...] = ("NonLocalSparseAttention",),
) -> nn.Module:
    """Replace, in place, every block of ``module`` that is the NLSN authors'
    ``NonLocalSparseAttention`` (or a copy of it: a class named in ``class_names`` with
    NLSN's attributes ``AUTHORS_ATTRIBUTES``) by ``nlsa_triton.NonLocalSparseAttention``
    with the same hyper-parameters, the same convolution modules (so the same weights,
    keys, device, dtype) and the same train/eval mode, running ``backend``.

    Returns ``module``, or the new block when ``module`` itself is one (as
    ``convert_sync_batchnorm`` does). The new blocks' forward takes the authors'
    ``forward(x)`` and also ``rotations=`` / ``generator=`` for reproducible hashing.
    Raises ``ValueError`` naming the block when its convolutions are not NLSN's.
    """
    return _convert(module, "model", backend, tuple(class_names))


def _convert(module: nn.Module, where: str, backend: str, class_names: tuple[str, ...]) -> nn.Module:
    if _is_authors_block(module, class_names):
        return _converted(module, where, backend)
    for name, child in list(module.named_children()):
        new = _convert(child, f"{where}.{name}", backend, class_names)
        if new is not child:
            setattr(module, name, new)
    return module
