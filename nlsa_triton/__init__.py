"""nlsa_triton: Non-Local Sparse Attention (NLSN, CVPR 2021) as fused Triton kernels.

Public API (``NLSA-SPEC.md`` section 8): ``num_buckets``, ``random_rotations``,
``lsh_hash``, ``bucket_sort``, ``chunked_attention``, ``nlsa``, the modules
``NonLocalSparseAttention`` and ``NonLocalAttention``, and ``reference``, the pure-torch
versions of the same functions.
"""
from . import reference
from .buckets import bucket_sort, num_buckets, random_rotations
from .functional import chunked_attention, lsh_hash, nlsa
from .modules import NonLocalAttention, NonLocalSparseAttention
from . import models
from .criss_cross import CrissCrossAttention
from .attention_maps import attention_maps

__version__ = "0.1.0"

__all__ = [
    "num_buckets",
    "random_rotations",
    "lsh_hash",
    "bucket_sort",
    "chunked_attention",
    "nlsa",
    "NonLocalSparseAttention",
    "NonLocalAttention",
    "CrissCrossAttention",
    "attention_maps",
    "reference",
]
