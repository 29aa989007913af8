"""Networks built on nlsa_triton's attention: ``NLSN``, the Non-Local Sparse Network.

``nlsn.py`` is the network, ``edsr.py`` the EDSR blocks it is built from, ``checkpoint.py``
reads checkpoints (wrapped, prefixed, ``.safetensors``) and their configuration, and
``flops.py`` counts a forward pass's FLOPs.
"""
from .nlsn import NLSN

__all__ = ["NLSN"]
