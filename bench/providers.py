"""The benchmarked providers: one function, the same inputs, several implementations.

What is measured (the "op on embeddings" choice): the attention operation given its
embeddings, not the whole module, so the convolutions that make the embeddings are not
timed and their outputs count as inputs (excluded from memory):

- nla_torch:   full non-local attention as NLSN's NonLocalAttention writes it:
               softmax(theta @ phi^T) @ g with the (L, L) score matrix materialised, no
               scale; theta, phi (1, L, C // 2), g (1, L, C) (NLSN's reduction 2).
- nla_sdpa:    the same attention through F.scaled_dot_product_attention(scale=1.0) on
               (1, 1, L, .) views of the same tensors (torch picks its kernel).
- nlsa_reference: nlsa_triton.nlsa(x, y, backend="reference"), NLSN's algorithm step by
               step in torch, every intermediate materialised (what the paper's Table 2
               measured; named nlsa_torch in results before the torch backend existed);
               x (1, L, C // 4) (NLSN's reduction 4), y (1, L, C); fixed rotations drawn
               once per configuration (an input), so repeats hash alike.
- nlsa_torch:  the same with backend="torch" (nlsa_triton.streaming: a round and a block of
               chunks at a time, O(L c) extra memory; what "auto" runs off CUDA).
- nlsa_triton: the same with backend="triton" (CUDA only).
- nlsa_flex:   the same function written with compiled FlexAttention (bench/nlsa_flex.py):
               sorted copies per round, a neighbour-chunks block mask, flex's log-sum-exp,
               rounds combined outside (CUDA only: compiled CPU flex cannot return the
               log-sum-exp); the block mask depends only on L and is built with the inputs.
- criss_cross: nlsa_triton.CrissCrossAttention(C, reduction=8, recurrence=2) (CCNet).
               The exception to the rule above: it is timed as the module on a (1, C, H, W)
               feature map, its 1x1 query/key/value convolutions and residual included,
               because CCNet's second pass recomputes its embeddings from the first
               pass's output (there is no embeddings-given form of recurrence 2).

Modes: "fwd" runs under torch.no_grad(); "fwd_bwd" runs the forward with the inputs
(and, for criss_cross, the parameters) requiring grad, then out.backward(grad_out) with
a fixed grad_out (an input); gradients are set to None at the start of every call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from common import Skip, triton_unavailable_reason

PROVIDERS = ("nlsa_triton", "nlsa_flex", "nlsa_torch", "nlsa_reference", "nla_torch", "nla_sdpa", "criss_cross")
HASHED = ("nlsa_triton", "nlsa_flex", "nlsa_torch", "nlsa_reference")  # providers with n_hashes and chunk_size
# The nlsa_triton.nlsa backend each of those providers runs.
NLSA_BACKENDS = {"nlsa_triton": "triton", "nlsa_torch": "torch", "nlsa_reference": "reference"}
MODES = ("fwd", "fwd_bwd")
# How a provider's time grows with L = H * W, for predicting the next size's cost.
TIME_EXPONENT = {"nla_torch": 2.0, "nla_sdpa": 2.0, "nlsa_torch": 1.0, "nlsa_reference": 1.0,
                 "nlsa_triton": 1.0, "nlsa_flex": 1.0, "criss_cross": 1.5}


@dataclass
class Config:
    provider: str
    mode: str
    height: int
    width: int
    channels: int
    n_hashes: int  # 0 for providers without hashing
    chunk_size: int  # 0 for providers without chunks
    dtype: str  # "float32", "float16", "bfloat16"
    batch: int = 1

    @property
    def pixels(self) -> int:
        return self.height * self.width

    def label(self) -> str:
        hashes = f" R={self.n_hashes}" if self.provider in HASHED else ""
        return (f"{self.provider} {self.mode} {self.height}x{self.width} C={self.channels}{hashes} "
                f"{self.dtype}")

    def series(self) -> tuple:
        """Everything but the size: sizes of one series run in increasing order."""
        return (self.provider, self.mode, self.channels, self.n_hashes, self.chunk_size, self.dtype)


@dataclass
class Case:
    """One ready configuration: ``fn()`` runs the op once (forward, or forward and backward)."""

    fn: Callable[[], None]
    grad_holders: list = field(default_factory=list)

    def clear_grads(self) -> None:
        for t in self.grad_holders:
            t.grad = None


def unavailable_reason(provider: str, device: str) -> str | None:
    """Why a provider cannot run on this device at all (checked before building inputs)."""
    if provider not in PROVIDERS:
        return f"unknown provider {provider!r}"
    if provider == "nlsa_triton":
        return triton_unavailable_reason(device)
    if provider == "nlsa_flex" and device != "cuda":
        return ("compiled FlexAttention on CPU is inference-only and refuses return_lse, which "
                "combining the rounds needs (torch 2.13); eager flex materialises (L, L) scores")
    return None


def check_channels(provider: str, channels: int) -> str | None:
    need = {"nla_torch": 2, "nla_sdpa": 2, "nlsa_torch": 4, "nlsa_reference": 4, "nlsa_triton": 4,
            "nlsa_flex": 4, "criss_cross": 8}[provider]
    if channels % need:
        return f"channels {channels} is not divisible by {need} ({provider}'s reduction)"
    return None


def _randn(shape, generator, device, dtype, requires_grad):
    t = torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)
    return t.requires_grad_(requires_grad)


def build(cfg: Config, device: str, seed: int = 0) -> Case:
    """Inputs (seeded, so every provider of one shape sees the same numbers) and the call."""
    reason = unavailable_reason(cfg.provider, device) or check_channels(cfg.provider, cfg.channels)
    if reason:
        raise Skip(reason)
    import nlsa_triton as nt

    dtype = getattr(torch, cfg.dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    train = cfg.mode == "fwd_bwd"
    n, length, c = cfg.batch, cfg.pixels, cfg.channels

    if cfg.provider in ("nla_torch", "nla_sdpa"):
        theta = _randn((n, length, c // 2), gen, device, dtype, train)
        phi = _randn((n, length, c // 2), gen, device, dtype, train)
        g = _randn((n, length, c), gen, device, dtype, train)
        leaves = [theta, phi, g]
        if cfg.provider == "nla_torch":
            def op():
                # NLSN: score = matmul(x_embed_1, x_embed_2) with x_embed_2 the (N, C, L) view.
                score = torch.matmul(theta, phi.transpose(1, 2))
                score = F.softmax(score, dim=2)
                return torch.matmul(score, g)
        else:
            def op():
                return F.scaled_dot_product_attention(theta[:, None], phi[:, None], g[:, None], scale=1.0)
    elif cfg.provider in HASHED:
        x = _randn((n, length, c // 4), gen, device, dtype, train)
        y = _randn((n, length, c), gen, device, dtype, train)
        leaves = [x, y]
        rotations = nt.random_rotations(
            c // 4, cfg.n_hashes, nt.num_buckets(length, cfg.chunk_size), generator=gen, device=device
        )
        if cfg.provider == "nlsa_flex":
            from nlsa_flex import neighbour_chunks_mask, nlsa_flex

            block_mask = neighbour_chunks_mask(length, cfg.chunk_size, device)

            def op():
                return nlsa_flex(x, y, rotations, cfg.chunk_size, block_mask)
        else:
            backend = NLSA_BACKENDS[cfg.provider]

            def op():
                return nt.nlsa(x, y, n_hashes=cfg.n_hashes, chunk_size=cfg.chunk_size,
                               rotations=rotations, backend=backend)
    elif cfg.provider == "criss_cross":
        torch.manual_seed(seed)  # the module's initial weights
        module = nt.CrissCrossAttention(c, reduction=8, recurrence=2).to(device=device, dtype=dtype)
        inp = _randn((n, c, cfg.height, cfg.width), gen, device, dtype, train)
        leaves = [inp] + (list(module.parameters()) if train else [])

        def op():
            return module(inp)
    else:  # pragma: no cover - unavailable_reason already refused it
        raise Skip(f"unknown provider {cfg.provider!r}")

    if not train:
        def fn():
            with torch.no_grad():
                op()
        return Case(fn)

    out_shape = {"nla_sdpa": (n, 1, length, c), "criss_cross": (n, c, cfg.height, cfg.width)}.get(
        cfg.provider, (n, length, c))
    grad_out = torch.randn(out_shape, generator=gen, device=device, dtype=torch.float32).to(dtype)

    def fn():
        for t in leaves:
            t.grad = None
        op().backward(grad_out)
    return Case(fn, leaves)  # fn does not refer to the Case: no cycle, freed by refcount
