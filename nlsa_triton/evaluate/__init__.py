"""Evaluating super-resolution: ``python -m nlsa_triton.evaluate`` (``cli.py``) on the
benchmark layout or on folders of SR and HR images; ``core.py`` holds the set discovery,
the whole-image/tiled/self-ensemble runs and the per-image measurement. The metrics are
``nlsa_triton.metrics.psnr_y`` / ``ssim_y``."""
from .cli import build_parser, main
from .core import find_benchmark_set, measure, super_resolve

__all__ = ["build_parser", "main", "find_benchmark_set", "measure", "super_resolve"]
