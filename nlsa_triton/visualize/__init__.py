"""Looking inside NLSA: ``attention_maps`` (``maps.py``), each hash round's attention
weights for one query pixel and the combined weights (docs/semantics.md §6.1), as in
Figure 1 of the NLSN supplementary material. Also importable from ``nlsa_triton``;
``examples/attention_maps_figure.py`` draws the figure."""
from .maps import attention_maps

__all__ = ["attention_maps"]
