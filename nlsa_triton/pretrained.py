"""The checkpoint shipped with the package: the upscaler's weights when ``--weights`` is not given.

``nlsa_triton/weights/nlsn_x2_photos.pt`` is a small NLSN x2 (n_feats 32, 8 residual
blocks, two NLSA blocks; 0.2 M parameters) trained on the CPU with ``python -m
nlsa_triton.train`` on three public-domain / CC0 photographs from scikit-image's data
module (astronaut, coffee, rocket), holding out chelsea (scikit-image) and grace_hopper
(matplotlib). It is a working demonstration, far from the paper's NLSN (trained on DIV2K
at 41.8 M parameters): docs/training.md gives its held-out PSNR-Y / SSIM-Y against bicubic
and the commands that trained it. Give ``--weights`` for real work.
"""
from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["SHIPPED_WEIGHTS", "resolve_weights"]

SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "nlsn_x2_photos.pt"


def resolve_weights(weights: Path | None, *, quiet: bool = False) -> Path:
    """``weights``, or the shipped checkpoint (saying so on stderr unless ``quiet``) when None."""
    if weights is not None:
        return weights
    if not quiet:
        print(f"no --weights given: using the small NLSN x2 shipped with nlsa_triton ({SHIPPED_WEIGHTS.name}, "
              "0.2 M parameters, trained on 3 photos; docs/training.md); pass --weights for your own model",
              file=sys.stderr)
    return SHIPPED_WEIGHTS
