"""Training data: DIV2K's layout, or a folder of HR images with the LR made on the fly.

DIV2K layout (EDSR's and NLSN's)::

    ROOT/DIV2K_train_HR/<name>.png
    ROOT/DIV2K_train_LR_bicubic/X<S>/<name>x<S>.png

A folder of HR images alone (PNG, JPEG, WebP, BMP): each LR image is the HR image shrunk
by ``scale`` with torch's bicubic interpolation with antialiasing, rounded to 8 bits. That
is Keys' cubic (a = -0.5) widened by the scale when shrinking, as MATLAB's ``imresize``
(which made DIV2K's and the benchmarks' LR images) uses; the two differ at the borders,
where MATLAB mirrors the image and torch renormalises the kernel over the pixels inside
it, and by a rounding level here and there, so a network trained on either fits both.

Everything is checked before training starts (``find_pairs``): a missing or empty folder,
an HR image without its LR partner or an LR image without its HR one, an LR image whose
size is not the HR size divided by the scale, an image smaller than the training patch;
the error names the file.

Patches: an LR patch of ``patch_size // scale`` pixels at a random place, its HR patch
``scale`` times larger (``patch_size``, EDSR's convention: the HR size), then EDSR's
augmentation: horizontal flip, vertical flip, transpose (with the flips, the 8 rotations
and reflections), each with probability 1/2. A sample's randomness comes from its own
seed, so the data a run sees depends on the seed and the iteration only (exact resumes).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..upscale.images import IMAGE_FORMATS

__all__ = ["Pair", "find_pairs", "PatchDataset", "downscale", "load_rgb"]

DIV2K_HR = "DIV2K_train_HR"
DIV2K_LR = "DIV2K_train_LR_bicubic"


class DataError(ValueError):
    """Training or validation data that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Pair:
    hr: Path
    lr: Path | None  # None: made from hr on the fly


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_FORMATS)


def _size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read {path} as an image: {e}") from e


def find_pairs(root: Path, scale: int, patch_size: int, *, what: str = "--data") -> list[Pair]:
    """The (HR, LR) pairs under ``root``, checked; raises DataError naming the first bad file."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{what} {root}: not a folder")
    hr_dir = root / DIV2K_HR
    if hr_dir.is_dir():
        lr_dir = root / DIV2K_LR / f"X{scale}"
        if not lr_dir.is_dir():
            raise DataError(f"{what} {root}: DIV2K layout without its LR folder {lr_dir}")
        hrs, lrs = _images(hr_dir), _images(lr_dir)
        if not hrs:
            raise DataError(f"{what} {root}: no images in {hr_dir}")
        by_name = {p.stem: p for p in lrs}
        pairs = []
        for hr in hrs:
            lr = by_name.pop(f"{hr.stem}x{scale}", None)
            if lr is None:
                raise DataError(f"{hr} has no LR image {lr_dir / (hr.stem + f'x{scale}.png')}")
            pairs.append(Pair(hr, lr))
        if by_name:
            extra = sorted(by_name.values())[0]
            raise DataError(f"{extra} has no HR image in {hr_dir} (expected <name>x{scale}.<ext> for <name>.<ext>)")
    else:
        hrs = _images(root)
        if not hrs:
            raise DataError(f"{what} {root}: no images (PNG, JPEG, WebP, BMP), and no {DIV2K_HR} folder")
        pairs = [Pair(hr, None) for hr in hrs]
    lr_patch = patch_size // scale
    for pair in pairs:
        w, h = _size(pair.hr)
        if pair.lr is not None:
            lw, lh = _size(pair.lr)
            if (lw, lh) != (w // scale, h // scale):
                raise DataError(f"{pair.lr} is {lw}x{lh}; for the {w}x{h} HR image {pair.hr} at x{scale} "
                                f"it must be {w // scale}x{h // scale}")
        if min(w, h) // scale < lr_patch:
            raise DataError(f"{pair.hr} ({w}x{h}) is smaller than the training patch ({patch_size} HR pixels)")
    return pairs


def load_rgb(path: Path) -> torch.Tensor:
    """An image file as a (3, H, W) uint8 tensor."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        rgb = ImageOps.exif_transpose(img).convert("RGB")
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, H // scale, W // scale) uint8: bicubic with antialiasing, rounded."""
    h, w = hr.shape[-2] // scale, hr.shape[-1] // scale
    lr = F.interpolate(hr[None].float(), size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return lr[0].clamp(0, 255).round().to(torch.uint8)


class PatchDataset(torch.utils.data.Dataset):
    """Random augmented patches. ``dataset[(index, seed)]`` -> (lr, hr) float32 patches in
    [0, rgb_range] of image ``index``, placed and augmented by ``seed``."""

    def __init__(self, pairs: list[Pair], scale: int, patch_size: int, rgb_range: float = 1, cache: bool = False):
        self.pairs, self.scale, self.rgb_range, self.cache = pairs, scale, rgb_range, cache
        self.lr_patch = patch_size // scale
        self._cached: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def images(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(lr, hr) uint8, hr cropped to scale times lr's size (EDSR's crop)."""
        if index in self._cached:
            return self._cached[index]
        pair = self.pairs[index]
        hr = load_rgb(pair.hr)
        lr = load_rgb(pair.lr) if pair.lr is not None else downscale(hr, self.scale)
        hr = hr[:, :lr.shape[1] * self.scale, :lr.shape[2] * self.scale]
        if self.cache:
            self._cached[index] = lr, hr
        return lr, hr

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        lr, hr = self.images(index)
        g = torch.Generator().manual_seed(seed)
        p, s = self.lr_patch, self.scale
        y = int(torch.randint(0, lr.shape[1] - p + 1, (1,), generator=g))
        x = int(torch.randint(0, lr.shape[2] - p + 1, (1,), generator=g))
        lr = lr[:, y:y + p, x:x + p]
        hr = hr[:, y * s:(y + p) * s, x * s:(x + p) * s]
        hflip, vflip, transpose = (torch.rand(3, generator=g) < 0.5).tolist()
        if hflip:
            lr, hr = lr.flip(-1), hr.flip(-1)
        if vflip:
            lr, hr = lr.flip(-2), hr.flip(-2)
        if transpose:
            lr, hr = lr.transpose(-1, -2), hr.transpose(-1, -2)
        k = self.rgb_range / 255.0
        return lr.float() * k, hr.float() * k
