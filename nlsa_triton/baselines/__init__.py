"""The attention blocks NLSA is compared with (not on NLSA's data path).

- ``NonLocalAttention`` (``non_local.py``): NLSN's full non-local attention baseline,
  with NLSN's parameter names (docs/semantics.md §7.2).
- ``CrissCrossAttention`` (``criss_cross.py``): CCNet's criss-cross attention, the sparse
  baseline of the NLSN supplementary material.

Both are also importable from ``nlsa_triton``.
"""
from .criss_cross import CrissCrossAttention, criss_cross_attention
from .non_local import NonLocalAttention

__all__ = ["NonLocalAttention", "CrissCrossAttention", "criss_cross_attention"]
