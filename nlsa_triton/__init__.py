"""nlsa_triton: Non-Local Sparse Attention (NLSN, CVPR 2021) as fused Triton kernels.

Public API (docs/semantics.md §8), along the data path: ``num_buckets`` and
``random_rotations`` (``hashing``), ``lsh_hash``, ``bucket_sort`` (``sorting``),
``chunked_attention`` and ``nlsa`` (``functional``), the module
``NonLocalSparseAttention`` (``modules``) and ``convert_nlsa`` (``convert``: the authors'
blocks in any model swapped for it); ``reference`` (the step-by-step oracle) and
``streaming`` (the torch backend), the pure-torch versions of the same functions. Beside
the data path: the baselines ``NonLocalAttention`` and ``CrissCrossAttention``
(``baselines``), ``attention_maps`` (``visualize``) and ``models.NLSN``.
"""
from . import reference, streaming
from .hashing import num_buckets, random_rotations
from .sorting import bucket_sort
from .functional import chunked_attention, lsh_hash, nlsa
from .modules import NonLocalSparseAttention
from .convert import convert_nlsa
from .baselines import CrissCrossAttention, NonLocalAttention
from .visualize import attention_maps
from . import models

__version__ = "0.1.0"

__all__ = [
    "num_buckets",
    "random_rotations",
    "lsh_hash",
    "bucket_sort",
    "chunked_attention",
    "nlsa",
    "NonLocalSparseAttention",
    "convert_nlsa",
    "NonLocalAttention",
    "CrissCrossAttention",
    "attention_maps",
    "reference",
]
