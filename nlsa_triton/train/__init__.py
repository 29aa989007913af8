"""Training NLSN and the Table 1 variants: ``python -m nlsa_triton.train`` (``cli.py``, the
recipe and the loop; ``data.py``, the data). docs/training.md is the user's guide."""
from .cli import build_parser, main

__all__ = ["build_parser", "main"]
