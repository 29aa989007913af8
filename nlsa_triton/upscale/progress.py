"""What the upscaler prints, and where: results (a line per image, the summary) on stdout,
progress and diagnostics on stderr, as Unix tools do, so ``> log`` keeps the results and
the screen keeps the bars.

Progress inside an image counts the network's stages (each module of NLSN's body, then
the tail) over every tile. On a terminal it is a tqdm bar; otherwise (a log file, a CI
job) a line on stderr at most every ``LINE_EVERY_S`` seconds, so a long image is never
silent for long.
"""
from __future__ import annotations

import sys
import time

from .errors import UpscaleError

#: When stderr is not a terminal, a progress line at most this often, in seconds.
LINE_EVERY_S = 30.0


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
    (the stages of one image) sits under the images bar and disappears when done."""
    tqdm = require_tqdm()
    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
        disable=quiet or not sys.stderr.isatty(), position=1 if nested else 0, leave=not nested,
    )


class Steps:
    """Progress through ``total`` steps of one image: a nested tqdm bar on a terminal, else
    a line on stderr at most every ``LINE_EVERY_S`` seconds. Nothing with ``quiet``."""

    def __init__(self, total: int, *, desc: str, unit: str = "stage", quiet: bool = False):
        self.total, self.desc, self.unit, self.quiet = total, desc, unit, quiet
        self.done = 0
        self.terminal = sys.stderr.isatty()
        self.bar = bar(total, desc=desc, unit=unit, quiet=quiet, nested=True) if self.terminal else None
        self.started = self.last_line = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if not self.quiet and now - self.last_line >= LINE_EVERY_S and self.done < self.total:
            self.last_line = now
            log(f"{self.desc}: {self.done}/{self.total} {self.unit}s ({100 * self.done // self.total}%), "
                f"{now - self.started:.0f} s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Steps":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def log(message: str) -> None:
    """A diagnostic line on stderr, printed above any bar on screen instead of through it."""
    require_tqdm().write(message, file=sys.stderr)


def result(message: str) -> None:
    """A result line on stdout (a bar on stderr is cleared and redrawn around it)."""
    require_tqdm().write(message, file=sys.stdout)
