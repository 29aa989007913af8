"""Images: 8-bit RGB in, resized for ``--outscale``, written to a temporary file renamed into place."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UpscaleError

#: What a folder input is scanned for, and the format each output extension is written in.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
#: Pillow's defaults (75 for JPEG, 80 for WebP) visibly blur the detail an upscaler adds.
LOSSY_QUALITY = 95


def require_pillow():
    """Pillow's Image, ImageOps and UnidentifiedImageError, or an UpscaleError saying how to install it."""
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError as e:
        raise UpscaleError(
            "reading and writing images needs Pillow, which is not installed; "
            "install it with: pip install 'nlsa-triton[cli]'  (or: pip install pillow)"
        ) from e
    return Image, ImageOps, UnidentifiedImageError


def read_image(path: Path, rgb_range: float) -> torch.Tensor:
    """An image as a (1, 3, H, W) float32 tensor in [0, rgb_range].

    Any mode Pillow reads is converted to RGB (alpha dropped); a JPEG's EXIF orientation is
    applied first, so a photo comes out the way viewers show it.
    """
    Image, ImageOps, UnidentifiedImageError = require_pillow()
    try:
        with Image.open(path) as img:
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise UpscaleError(f"cannot read {path} as an image (PNG, JPEG, WebP or BMP expected): {e}") from e
    array = np.asarray(rgb, dtype=np.float32)  # (H, W, 3), 0..255
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)
    return tensor / 255.0 * rgb_range


def write_image(tensor: torch.Tensor, path: Path, rgb_range: float) -> None:
    """(1, 3, H, W) in [0, rgb_range] -> an 8-bit RGB file in the format of ``path``'s extension
    (EDSR's quantisation: scale, clamp, round).

    The image is written to a hidden temporary file beside ``path`` and renamed over it, so
    an interrupted run never leaves a half-written image under the output's name.
    """
    Image, _, _ = require_pillow()
    image_format = IMAGE_FORMATS.get(path.suffix.lower(), "PNG")
    options = {"quality": LOSSY_QUALITY} if image_format in ("JPEG", "WEBP") else {}
    pixels = (tensor[0].float() * (255.0 / rgb_range)).clamp(0, 255).round().to(torch.uint8)
    image = Image.fromarray(pixels.permute(1, 2, 0).contiguous().cpu().numpy())
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as f:  # the umask's permissions, unlike mkstemp's 0600
            image.save(f, format=image_format, **options)
        os.replace(temporary, path)
    except (OSError, ValueError) as e:  # ValueError: an image the format cannot hold (WebP: 16383 px)
        temporary.unlink(missing_ok=True)
        raise UpscaleError(f"cannot write {path}: {e}") from e
    except BaseException:  # interrupted: leave nothing behind
        temporary.unlink(missing_ok=True)
        raise


def resize(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, height, width) by bicubic interpolation with antialiasing
    (a low-pass filter when shrinking, as PIL's resize), in float32, before quantisation."""
    if tensor.shape[-2:] == (height, width):
        return tensor
    return F.interpolate(tensor.float(), size=(height, width), mode="bicubic", antialias=True, align_corners=False)
