"""Triton kernels of nlsa_triton (installed as ``nlsa_triton.kernels``) and their launchers."""
from .chunked_attention_bwd import chunked_attention_bwd
from .chunked_attention_fwd import chunked_attention_fwd
from .lsh_hash import lsh_hash_triton

__all__ = ["chunked_attention_bwd", "chunked_attention_fwd", "lsh_hash_triton"]
