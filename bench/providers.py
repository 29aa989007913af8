"""What the sweep measures: one function, the same seeded inputs, several implementations
(bench/README.md, "What is measured", has the table). The attention op is measured on
given embeddings (the convolutions that make them are not timed, their outputs are
inputs), except criss_cross, timed as the module: CCNet's second pass recomputes its
embeddings from the first pass's output. "fwd" runs under no_grad; "fwd_bwd" runs the
forward with the inputs (and criss_cross's parameters) requiring grad, then
out.backward(grad_out) with a fixed grad_out, the gradients reset at every call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness import Skip, triton_unavailable_reason
from schema import Config

PROVIDERS = ("nlsa_triton", "nlsa_flex", "nlsa_torch", "nlsa_reference", "nla_torch", "nla_sdpa", "criss_cross")
HASHED = ("nlsa_triton", "nlsa_flex", "nlsa_torch", "nlsa_reference")  # providers with n_hashes and chunk_size
# The nlsa_triton.nlsa backend each of those providers runs.
NLSA_BACKENDS = {"nlsa_triton": "triton", "nlsa_torch": "torch", "nlsa_reference": "reference"}
MODES = ("fwd", "fwd_bwd")
# How a provider's time grows with L = H * W, for predicting the next size's cost.
TIME_EXPONENT = {"nla_torch": 2.0, "nla_sdpa": 2.0, "nlsa_torch": 1.0, "nlsa_reference": 1.0,
                 "nlsa_triton": 1.0, "nlsa_flex": 1.0, "criss_cross": 1.5}


REDUCTION = {"nla_torch": 2, "nla_sdpa": 2, "criss_cross": 8, **{p: 4 for p in HASHED}}  # channels / embedding


def unavailable_reason(cfg: Config, device: str) -> str | None:
    """Why this configuration cannot run on this device (checked before building inputs)."""
    if cfg.provider not in PROVIDERS:
        return f"unknown provider {cfg.provider!r}"
    if cfg.provider == "nlsa_triton":
        return triton_unavailable_reason(device)
    if cfg.provider == "nlsa_flex" and device != "cuda":
        return ("compiled FlexAttention on CPU is inference-only and refuses return_lse, which "
                "combining the rounds needs (torch 2.13); eager flex materialises (L, L) scores")
    if cfg.channels % REDUCTION[cfg.provider]:
        return f"channels {cfg.channels} is not divisible by {REDUCTION[cfg.provider]} ({cfg.provider}'s reduction)"
    return None


def _randn(shape, generator, device, dtype, requires_grad):
    t = torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)
    return t.requires_grad_(requires_grad)


def build(cfg: Config, device: str, seed: int = 0):
    """The setup of a configuration: seeded inputs (every provider of one shape sees the same
    numbers) and the call to measure."""
    reason = unavailable_reason(cfg, device)
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

    if not train:
        def fn():
            with torch.no_grad():
                op()
        return fn

    out_shape = {"nla_sdpa": (n, 1, length, c), "criss_cross": (n, c, cfg.height, cfg.width)}.get(
        cfg.provider, (n, length, c))
    grad_out = torch.randn(out_shape, generator=gen, device=device, dtype=torch.float32).to(dtype)

    def fn():
        for t in leaves:
            t.grad = None
        op().backward(grad_out)
    return fn
