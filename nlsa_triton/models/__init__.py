"""Networks built on nlsa_triton's attention: ``NLSN``, the Non-Local Sparse Network.

``nlsn.py`` is the network, ``edsr.py`` the EDSR blocks it is built from, ``strips.py`` runs
their tail a strip of rows at a time at inference on the CPU (the same bits, a fraction of
the memory), ``checkpoint.py`` reads checkpoints (wrapped, prefixed, ``.safetensors``) and
their configuration, ``flops.py`` counts a forward pass's FLOPs, and ``variants.py`` builds
NLSN's Table 1 networks (EDSR with no attention, non-local, criss-cross or NLSA attention
at NLSN's places) and loads the trainer's checkpoints.
"""
from .nlsn import NLSN

__all__ = ["NLSN"]
