"""Triton kernels of nlsa_triton and their launchers.

This top-level ``kernels/`` folder is installed as the subpackage ``nlsa_triton.kernels``
(``[tool.setuptools.package-dir]`` in pyproject.toml maps ``nlsa_triton.kernels`` to
``kernels``). The package calls these launchers only through the custom ops of
``nlsa_triton/_ops.py``.
"""
from .chunked_attention_bwd import chunked_attention_bwd
from .chunked_attention_fwd import chunked_attention_fwd
from .counting_sort import counting_sort
from .lsh_hash import BLOCK_L as HASH_BLOCK_L
from .lsh_hash import lsh_hash_triton

__all__ = ["HASH_BLOCK_L", "chunked_attention_bwd", "chunked_attention_fwd", "counting_sort", "lsh_hash_triton"]
