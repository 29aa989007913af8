"""Networks built on nlsa_triton's attention: ``NLSN``, the Non-Local Sparse Network."""
from .nlsn import NLSN

__all__ = ["NLSN"]
