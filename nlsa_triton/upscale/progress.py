"""Progress bars (tqdm, on stderr) and messages that do not break them."""
from __future__ import annotations

import sys

from .errors import UpscaleError


def require_tqdm():
    try:
        from tqdm import tqdm
    except ImportError as e:
        raise UpscaleError(
            "the progress bars need tqdm, which is not installed; "
            "install it with: pip install 'nlsa-triton[cli]'  (or: pip install tqdm)"
        ) from e
    return tqdm


def bar(total: int, *, desc: str, unit: str, quiet: bool, nested: bool = False):
    """A tqdm bar on stderr, shown only on a terminal and without ``--quiet``. A nested bar
    (the tiles of one image) sits under the images bar and disappears when done."""
    tqdm = require_tqdm()
    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
        disable=quiet or not sys.stderr.isatty(), position=1 if nested else 0, leave=not nested,
    )


def log(message: str) -> None:
    """A line on stderr, printed above any bar on screen instead of through it."""
    require_tqdm().write(message, file=sys.stderr)
