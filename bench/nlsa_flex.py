"""NLSA written with FlexAttention, the way a user of ``torch.nn.attention.flex_attention``
would write it: the benchmark's strongest peer of the Triton kernels.

Per hash round, the rows of x and y are copied into the round's sorted order (padded with
copies of the last sorted rows, as NLSN pads); the hash rounds are flex's heads. A block
mask says "a query's own chunk and both neighbouring chunks, wrapping around"; flex
returns each round's output and log-sum-exp; the rounds are combined outside, weighted by
the softmax of their log-sum-exps, as NLSN does. Keys are L2-normalised (eps 5e-5), queries
are not, and the scale is 1.0.

Candidates form a multiset (``nlsa_triton.reference`` and the kernels count duplicates).
With three or more chunks, own, previous and next are three different chunks. With two,
the other chunk is both the previous and the next one, so its keys count twice: a
score_mod adds log(2) to their scores (exp(s + log 2) = 2 exp(s)). With one chunk every key
counts three times in every round, a common factor that cancels in each round's softmax
and in the rounds' weights, so nothing needs expressing.

Where it runs (torch 2.13): on CUDA, flex compiled (``torch.compile(flex_attention)``),
forward and backward. Inductor's CPU flex template supports inference only and refuses
``return_lse`` ("torch.compile on CPU only supports inference and `return_lse` is not
supported yet."), so the compiled CPU path cannot run this at all, neither forward nor
backward. Eager flex (``compiled=False``) runs everywhere, but it materialises the full
(L, L + padding) score matrix of every round; the tests use it on CPU to check the
formulation against the reference, the benchmark never times it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, create_block_mask, flex_attention

import nlsa_triton as nt
from nlsa_triton.chunks import chunk_layout

KEY_NORM_EPS = 5e-5
# The sweep asks for more shapes, dtypes and masks than dynamo's default recompile limit
# (8), past which it would silently fall back to eager flex.
torch._dynamo.config.recompile_limit = 256
compiled_flex_attention = torch.compile(flex_attention)
compiled_create_block_mask = torch.compile(create_block_mask)


def neighbour_chunks_mask(length: int, chunk_size: int, device, *, compiled: bool = True) -> BlockMask:
    """Queries at sorted positions [0, L) see keys at padded sorted positions [0, L + P) in
    the query's chunk and the two chunks around it, wrapping around. The same for every
    image and round (B and H broadcast), so it is built once per (L, chunk_size).

    ``compiled``: build it with ``torch.compile(create_block_mask)``, which fuses the mask
    into its per-block reduction instead of materialising the dense (L, L + P) boolean mask
    that eager ``create_block_mask`` builds (a terabyte at 1024 x 1024).
    """
    chunk, padding, n_chunks = chunk_layout(length, chunk_size)

    def neighbour_chunks(b, h, q_idx, kv_idx):
        offset = (kv_idx // chunk - q_idx // chunk) % n_chunks
        return (offset <= 1) | (offset == n_chunks - 1)

    build = compiled_create_block_mask if compiled else create_block_mask
    return build(neighbour_chunks, None, None, length, length + padding, device=device)


def _multiplicity_score_mod(chunk: int, n_chunks: int):
    """None, or the score_mod that counts the other chunk twice when there are two chunks."""
    if n_chunks != 2:
        return None

    def other_chunk_counts_twice(score, b, h, q_idx, kv_idx):
        return torch.where(q_idx // chunk == kv_idx // chunk, score, score + math.log(2.0))

    return other_chunk_counts_twice


def chunked_attention_flex(
    x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, chunk_size: int,
    block_mask: BlockMask, *, compiled: bool = True,
) -> torch.Tensor:
    """``nt.chunked_attention(x, y, perm, chunk_size)`` through flex_attention.

    x (N, L, d), y (N, L, c) of one dtype, perm (N, R, L); block_mask from
    ``neighbour_chunks_mask(L, chunk_size, device)``. Returns (N, L, c) in y's dtype.
    """
    n, length, _ = x.shape
    chunk, padding, n_chunks = chunk_layout(length, chunk_size)
    padded = torch.cat([perm, perm[..., length - padding:]], dim=-1)  # (N, R, L + P)
    images = torch.arange(n, device=x.device)[:, None, None]
    queries = x[images, perm]  # (N, R, L, d): the rounds are flex's heads
    keys = F.normalize(x, dim=-1, eps=KEY_NORM_EPS)[images, padded]  # (N, R, L + P, d)
    values = y[images, padded]  # (N, R, L + P, c)
    attention = compiled_flex_attention if compiled else flex_attention
    out, aux = attention(queries, keys, values, score_mod=_multiplicity_score_mod(chunk, n_chunks),
                         block_mask=block_mask, scale=1.0, return_aux=AuxRequest(lse=True))
    # Back to pixel order (in at least float32), then one softmax over the rounds'
    # log-sum-exps weights them.
    out = out.to(torch.promote_types(out.dtype, torch.float32))
    out = torch.zeros_like(out).scatter(2, perm.unsqueeze(-1).expand_as(out), out)
    lse = torch.zeros_like(aux.lse).scatter(2, perm, aux.lse)
    weights = torch.softmax(lse, dim=1).unsqueeze(-1)  # (N, R, L, 1)
    return (weights * out).sum(dim=1).to(y.dtype)


def nlsa_flex(
    x: torch.Tensor, y: torch.Tensor, rotations: torch.Tensor, chunk_size: int,
    block_mask: BlockMask, *, compiled: bool = True,
) -> torch.Tensor:
    """``nt.nlsa(x, y, rotations=rotations, chunk_size=chunk_size)`` with the attention in
    flex: the hash and the stable sort are nlsa_triton's torch ones."""
    perm = nt.bucket_sort(nt.reference.lsh_hash(x.detach(), rotations))
    return chunked_attention_flex(x, y, perm, chunk_size, block_mask, compiled=compiled)
