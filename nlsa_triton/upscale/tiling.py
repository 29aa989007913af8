"""Running the network on a whole image or in tiles, and retrying in smaller tiles when
memory runs out."""
from __future__ import annotations

import math

import torch

from .._oom import is_out_of_memory
from . import progress
from .errors import UpscaleError

#: The out-of-memory fallback halves the tile down to this size before giving up.
MIN_AUTO_TILE = 16


def _spans(size: int, tile: int) -> list[tuple[int, int]]:
    return [(start, min(start + tile, size)) for start in range(0, size, tile)]


def _stages(model) -> list:
    """The modules whose ends mark progress: NLSN's body, one by one (its tail, the last
    stage, is counted when the network returns). Any other model is one stage."""
    body = getattr(model, "body", None)
    return list(body) if isinstance(body, torch.nn.Sequential) else []


def upscale_tensor(
    model,
    lr: torch.Tensor,
    *,
    tile: int | None = None,
    tile_pad: int = 10,
    generator: torch.Generator | None = None,
    quiet: bool = True,
    desc: str = "image",
) -> torch.Tensor:
    """Run ``model`` on lr (N, 3, H, W), whole or in tiles of ``tile`` x ``tile`` LR pixels.

    Each tile is run with up to ``tile_pad`` extra pixels on every side (clipped at the
    border), and only its own region, times the scale, is kept. Tiles are run in
    row-major order, drawing rotations from ``generator`` in that order. Progress (the
    network's stages over all tiles, ``progress.Steps``) is shown unless ``quiet``.
    """
    n, c, h, w = lr.shape
    tiles = [(ys, xs) for ys in _spans(h, tile) for xs in _spans(w, tile)] if tile else [((0, h), (0, w))]
    stages = _stages(model)
    if len(tiles) > 1:
        desc = f"{desc} ({len(tiles)} tiles)"
    steps = progress.Steps(len(tiles) * (len(stages) + 1), desc=desc, quiet=quiet)
    hooks = [m.register_forward_hook(lambda *_: steps.update()) for m in stages]
    try:
        with torch.no_grad():
            if tile is None:
                out = model(lr, generator=generator)
                steps.update()
                return out
            s = model.scale
            out = lr.new_empty((n, c, h * s, w * s))
            for (y0, y1), (x0, x1) in tiles:
                py0, py1 = max(0, y0 - tile_pad), min(h, y1 + tile_pad)
                px0, px1 = max(0, x0 - tile_pad), min(w, x1 + tile_pad)
                sr = model(lr[:, :, py0:py1, px0:px1], generator=generator)
                steps.update()
                out[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = sr[
                    :, :, (y0 - py0) * s:(y1 - py0) * s, (x0 - px0) * s:(x1 - px0) * s
                ]
            return out
    finally:
        for hook in hooks:
            hook.remove()
        steps.close()


def smaller_tile(lr: torch.Tensor, tile: int | None) -> int:
    """After an out-of-memory error with ``tile`` (None: the whole image): the power of two
    below it, the next tile size to try; frees the CUDA cache for that try."""
    if lr.is_cuda:
        torch.cuda.empty_cache()
    current = tile or max(lr.shape[-2:])
    return 1 << max(0, math.ceil(math.log2(current)) - 1)


def upscale_with_fallback(
    model,
    lr: torch.Tensor,
    *,
    tile: int | None,
    tile_pad: int,
    seed: int | None,
    quiet: bool = True,
    desc: str = "image",
) -> torch.Tensor:
    """``upscale_tensor``, retried in tiles half the size on out-of-memory errors.

    Each attempt starts from a freshly seeded generator, so the result depends on the
    seed and the tiling only.
    """

    def generator() -> torch.Generator | None:
        return None if seed is None else torch.Generator(device=lr.device).manual_seed(seed)

    while True:
        try:
            return upscale_tensor(model, lr, tile=tile, tile_pad=tile_pad, generator=generator(), quiet=quiet,
                                  desc=desc)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            next_tile = smaller_tile(lr, tile)
            if next_tile < MIN_AUTO_TILE:
                tried = f"in tiles of {tile} x {tile} pixels" if tile else "on the whole image"
                hint = "; try --device cpu" if lr.is_cuda else ""
                raise UpscaleError(f"out of memory on {lr.device} even {tried}{hint}") from e
            tile = next_tile
            progress.log(f"out of memory on {lr.device}; retrying in tiles of {tile} x {tile} pixels "
                         f"(--tile-pad {tile_pad})")
