"""``python -m nlsa_triton.upscale``."""
import sys

from .cli import main

sys.exit(main())
