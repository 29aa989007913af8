"""Benchmark sets, running a network on an image (whole, tiled when memory runs out, or
with the x8 self-ensemble) and measuring it; the CLI (``cli.py``) and the trainer's
validation use these.

Benchmark layout (EDSR's and NLSN's)::

    ROOT/<set>/HR/<name>.png
    ROOT/<set>/LR_bicubic/X<S>/<name>x<S>.png

As in EDSR's benchmark loader, the HR image is cropped to ``scale`` times the LR image's
size (top-left), so HR sizes need not be multiples of the scale.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .._oom import is_out_of_memory
from ..metrics import psnr_y, quantize, ssim_y
from ..upscale.images import IMAGE_FORMATS
from ..upscale.tiling import MIN_AUTO_TILE, smaller_tile, upscale_tensor

__all__ = ["BenchmarkImage", "find_benchmark_set", "super_resolve", "ImageResult", "measure"]


class EvaluationError(ValueError):
    """Data or arguments evaluation cannot use; the message names the file or argument."""


@dataclass(frozen=True)
class BenchmarkImage:
    name: str
    hr: Path
    lr: Path


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_FORMATS)


def find_benchmark_set(root: Path, name: str, scale: int) -> list[BenchmarkImage]:
    """The images of ``root/name`` in the benchmark layout; raises EvaluationError naming a
    missing folder or an HR image without its LR image."""
    hr_dir, lr_dir = Path(root) / name / "HR", Path(root) / name / "LR_bicubic" / f"X{scale}"
    for folder in (hr_dir, lr_dir):
        if not folder.is_dir():
            raise EvaluationError(f"set {name}: no folder {folder} (expected ROOT/<set>/HR and "
                                  f"ROOT/<set>/LR_bicubic/X<scale>)")
    lrs = {p.stem: p for p in _images(lr_dir)}
    images = []
    for hr in _images(hr_dir):
        lr = lrs.get(f"{hr.stem}x{scale}")
        if lr is None:
            raise EvaluationError(f"{hr} has no LR image {lr_dir / (hr.stem + f'x{scale}.png')}")
        images.append(BenchmarkImage(hr.stem, hr, lr))
    if not images:
        raise EvaluationError(f"set {name}: no images in {hr_dir}")
    return images


def _transforms(x: torch.Tensor) -> list[torch.Tensor]:
    """EDSR's forward_x8 inputs: identity, vertical flip, horizontal flip, transpose, and
    their combinations."""
    out = [x]
    for op in (lambda t: t.flip(-2), lambda t: t.flip(-1), lambda t: t.transpose(-1, -2)):
        out += [op(t) for t in out]
    return out


def _untransform(y: torch.Tensor, i: int) -> torch.Tensor:
    """Undo transform ``i`` of ``_transforms`` (bits: 1 vflip, 2 hflip, 4 transpose; applied
    in that order, so undone in reverse)."""
    if i & 4:
        y = y.transpose(-1, -2)
    if i & 2:
        y = y.flip(-1)
    if i & 1:
        y = y.flip(-2)
    return y


def _run(model, lr: torch.Tensor, tile: int | None, seed: int | None, log) -> tuple[torch.Tensor, int | None]:
    """model(lr) whole, or in tiles halved after each out-of-memory error; (sr, tile used)."""
    while True:
        generator = None if seed is None else torch.Generator(device=lr.device).manual_seed(seed)
        try:
            return upscale_tensor(model, lr, tile=tile, tile_pad=10, generator=generator), tile
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            current = tile or max(lr.shape[-2:])
            tile = smaller_tile(lr, tile)
            if tile < MIN_AUTO_TILE:
                raise EvaluationError(f"out of memory on {lr.device} even in tiles of {current} pixels") from e
            log(f"out of memory on {lr.device}; retrying in tiles of {tile} x {tile} LR pixels (pad 10)")


def super_resolve(model, lr: torch.Tensor, *, self_ensemble: bool = False, seed: int | None = None,
                  tile: int | None = None, log=print) -> tuple[torch.Tensor, int | None]:
    """(1, 3, h, w) -> ((1, 3, s*h, s*w), the tile size used: ``tile``, the one the memory
    fallback came down to, or None for the whole image).

    With ``self_ensemble``, the mean of the outputs of the 8 flips and transposes, each
    undone (EDSR's ``forward_x8``); every pass draws its rotations from a generator seeded
    with ``seed`` (when given)."""
    if not self_ensemble:
        return _run(model, lr, tile, seed, log)
    total = None
    for i, x in enumerate(_transforms(lr)):
        y, used = _run(model, x, tile, seed, log)
        tile = used or tile
        y = _untransform(y, i)
        total = y if total is None else total.add_(y)
    return total.div_(8), tile


@dataclass
class ImageResult:
    set: str
    image: str
    psnr_y: float
    ssim_y: float
    seconds: float
    peak_memory_mb: float
    tile: int | None


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float:
    """CUDA's peak allocated memory; the process's peak RSS on the CPU (never reset, so a
    running maximum over the images)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(model, set_name: str, image: BenchmarkImage, scale: int, rgb_range: float, *,
            device: torch.device, dtype: torch.dtype = torch.float32, self_ensemble: bool = False,
            seed: int | None = None, tile: int | None = None, read_image,
            log=print) -> tuple[ImageResult, torch.Tensor]:
    """Super-resolve one benchmark image and measure it: (result, quantised SR on the CPU)."""
    lr = read_image(image.lr, rgb_range)
    hr = read_image(image.hr, rgb_range)
    h, w = lr.shape[-2:]
    if hr.shape[-2] < h * scale or hr.shape[-1] < w * scale:
        raise EvaluationError(f"{image.hr} ({hr.shape[-1]}x{hr.shape[-2]}) is smaller than {scale} x its "
                              f"LR image {image.lr} ({w}x{h})")
    hr = hr[..., :h * scale, :w * scale]
    _peak_reset(device)
    started = time.perf_counter()
    with torch.no_grad():
        sr, tile = super_resolve(model, lr.to(device=device, dtype=dtype), self_ensemble=self_ensemble,
                                 seed=seed, tile=tile, log=log)
        sr = quantize(sr.float().cpu(), rgb_range)
    seconds = time.perf_counter() - started
    result = ImageResult(set_name, image.name, psnr_y(sr, hr, scale, rgb_range=rgb_range),
                         ssim_y(sr, hr, scale, rgb_range=rgb_range), seconds, _peak_mb(device), tile)
    return result, sr
