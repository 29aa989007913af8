"""Images: read with what they are (gray or colour, alpha, 8 or 16 bits), resized for
``--outscale``, written back the same way to a temporary file renamed into place.

The network sees RGB. What an image is beyond that travels beside it in a ``Picture``:

- gray (Pillow's L, I;16, LA): replicated to RGB for the network, and the output turned
  back to gray with ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B, Pillow's and OpenCV's
  RGB-to-gray), as Real-ESRGAN's script does.
- alpha: upscaled by bicubic interpolation, not by the network (Real-ESRGAN runs it
  through the network by default and offers bicubic as an option). NLSN was trained on
  photographs, and an alpha channel is a mask: bicubic keeps a constant alpha exactly
  (an opaque image stays opaque) and costs nothing next to a second network run.
- 16 bits per channel, in and out: 16-bit gray through Pillow; 16-bit RGB and RGBA,
  which Pillow reads as 8 bits and cannot write, through pypng (PNG) and tifffile (TIFF).
  Formats that hold 8 bits only (JPEG, WebP, BMP) get 8.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UpscaleError

#: What a folder input is scanned for, and the format each output extension is written in.
IMAGE_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
}
#: The formats in words, for messages.
FORMAT_NAMES = "PNG, JPEG, WebP, BMP or TIFF"
#: Pillow's defaults (75 for JPEG, 80 for WebP) visibly blur the detail an upscaler adds.
LOSSY_QUALITY = 95
#: ITU-R 601 luma: the gray of an RGB output, as Pillow's convert("L") and OpenCV compute it.
LUMA = (0.299, 0.587, 0.114)
#: Formats that can store an alpha channel, and 16 bits per channel.
WITH_ALPHA = {"PNG", "WEBP", "TIFF"}
WITH_16_BITS = {"PNG", "TIFF"}
#: Pillow modes of one gray channel, and of 16-bit gray.
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_GRAY_16_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


@dataclass
class Picture:
    """An image as the upscaler carries it.

    rgb: (1, 3, H, W) float32 in [0, 1] (gray replicated to three channels); alpha:
    (1, 1, H, W) float32 in [0, 1] or None; gray: whether the file is gray; bits: 8 or 16
    per channel."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None
    gray: bool
    bits: int

    def describe(self) -> str:
        """``gray``, ``RGB``, ``gray+alpha`` or ``RGBA``, with the bit depth: ``RGBA 16-bit``."""
        kind = "gray" if self.gray else "RGB"
        kind = ("gray+alpha" if self.gray else "RGBA") if self.alpha is not None else kind
        return f"{kind} {self.bits}-bit"


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


def _require(module: str, what: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise UpscaleError(
            f"{what} needs {module}, which is not installed; install it with: "
            f"pip install 'nlsa-triton[cli]'  (or: pip install {'pypng' if module == 'png' else module})"
        ) from e


def _png_header(path: Path) -> tuple[int, int] | None:
    """A PNG's (bit depth, colour type) from its IHDR chunk, or None for another file."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _picture(array: np.ndarray, *, gray: bool, alpha: bool, bits: int) -> Picture:
    """(H, W, C) integers of ``bits`` bits -> a Picture (colour channels first, then alpha)."""
    pixels = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)[None]
    pixels = pixels / float(2 ** bits - 1)
    colour = pixels[:, :1].expand(-1, 3, -1, -1) if gray else pixels[:, :3]
    return Picture(colour.contiguous(), pixels[:, -1:].clone() if alpha else None, gray, bits)


def _read_16_bit_colour(path: Path, image_format: str) -> Picture:
    """16-bit RGB(A) PNG (pypng) or TIFF (tifffile), which Pillow would read as 8 bits."""
    if image_format == "PNG":
        png = _require("png", "reading a 16-bit colour PNG")
        try:
            width, height, rows, info = png.Reader(filename=str(path)).asDirect()
            array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
        except (png.Error, OSError, ValueError) as e:
            raise UpscaleError(f"cannot read {path} as a 16-bit PNG: {e}") from e
        array = array.reshape(height, width, info["planes"])
        return _picture(array, gray=info["greyscale"], alpha=info["alpha"], bits=16)
    tifffile = _require("tifffile", "reading a 16-bit colour TIFF")
    try:
        array = np.asarray(tifffile.imread(path))
    except (OSError, ValueError, RuntimeError) as e:
        raise UpscaleError(f"cannot read {path} as a 16-bit TIFF: {e}") from e
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise UpscaleError(f"cannot read {path}: a 16-bit TIFF of shape {array.shape} (one RGB or RGBA page expected)")
    return _picture(array, gray=False, alpha=array.shape[-1] == 4, bits=16)


def read_image(path: str | os.PathLike) -> Picture:
    """An image file as a ``Picture``.

    A JPEG's (or any file's) EXIF orientation is applied first, so a photo comes out the
    way viewers show it; palette images become RGB or RGBA; 16-bit colour files are read
    at 16 bits (without EXIF orientation, which such PNG and TIFF files rarely carry).
    """
    Image, ImageOps, UnidentifiedImageError = require_pillow()
    path = Path(path)
    try:
        with Image.open(path) as img:
            image_format = img.format
            header = _png_header(path) if image_format == "PNG" else None
            colour_16 = (header is not None and header[0] == 16 and header[1] in (2, 6)) or (
                image_format == "TIFF" and img.mode in ("RGB", "RGBA")
                and max(img.tag_v2.get(258, (8,))) == 16)  # BitsPerSample
            if not colour_16:
                img = ImageOps.exif_transpose(img)
                img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise UpscaleError(f"cannot read {path} as an image ({FORMAT_NAMES} expected): {e}") from e
    if colour_16:
        return _read_16_bit_colour(path, image_format)
    mode = img.mode
    alpha = "A" in mode or "a" in mode or "transparency" in img.info
    if mode in _GRAY_16_MODES:
        array = np.asarray(img.convert("I"), dtype=np.int64).clip(0, 65535)[..., None]
        return _picture(array, gray=True, alpha=False, bits=16)
    if mode in _GRAY_MODES and mode != "F":
        array = np.asarray(img.convert("LA" if alpha else "L"))
        return _picture(array.reshape(*array.shape[:2], -1), gray=True, alpha=alpha, bits=8)
    return _picture(np.asarray(img.convert("RGBA" if alpha else "RGB")), gray=False, alpha=alpha, bits=8)


def output_pixels(picture: Picture, rgb: torch.Tensor, rgb_range: float, height: int, width: int) -> np.ndarray:
    """The network's (1, 3, h, w) output in [0, rgb_range] -> (height, width, C) integers
    of ``picture``'s bit depth and kind: resized for ``--outscale`` (bicubic, antialiased,
    in float), gray again for a gray input, its alpha upscaled beside it; then EDSR's
    quantisation (scale, clamp, round)."""
    out = resize(rgb.float() / rgb_range, height, width)
    if picture.gray:
        out = sum(w * out[:, i:i + 1] for i, w in enumerate(LUMA))
    if picture.alpha is not None:
        out = torch.cat([out, resize(picture.alpha.to(out.device), height, width)], dim=1)
    top = 2 ** picture.bits - 1
    pixels = (out[0] * top).clamp(0, top).round()
    return pixels.permute(1, 2, 0).cpu().numpy().astype(np.uint16 if picture.bits == 16 else np.uint8)


def write_image(pixels: np.ndarray, path: str | os.PathLike) -> list[str]:
    """(H, W, C) uint8 or uint16 pixels (C: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) -> a file in
    the format of ``path``'s extension. Returns what the format could not hold ("alpha",
    "16 bits"), which was dropped.

    The image is written to a hidden temporary file beside ``path`` and renamed over it, so
    an interrupted run never leaves a half-written image under the output's name.
    """
    Image, _, _ = require_pillow()
    path = Path(path)
    image_format = IMAGE_FORMATS.get(path.suffix.lower(), "PNG")
    dropped = []
    channels = pixels.shape[-1]
    if channels in (2, 4) and image_format not in WITH_ALPHA:
        pixels, channels = pixels[..., :-1], channels - 1
        dropped.append("alpha")
    if pixels.dtype == np.uint16 and image_format not in WITH_16_BITS:
        pixels = ((pixels.astype(np.float32) / 257.0).round()).astype(np.uint8)
        dropped.append("16 bits")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as f:  # the umask's permissions, unlike mkstemp's 0600
            _save(Image, pixels, f, image_format)
        os.replace(temporary, path)
    except (OSError, ValueError) as e:  # ValueError: an image the format cannot hold (WebP: 16383 px)
        temporary.unlink(missing_ok=True)
        raise UpscaleError(f"cannot write {path}: {e}") from e
    except BaseException:  # interrupted: leave nothing behind
        temporary.unlink(missing_ok=True)
        raise
    return dropped


def _save(Image, pixels: np.ndarray, f, image_format: str) -> None:
    channels = pixels.shape[-1]
    if pixels.dtype == np.uint16 and channels > 1:  # Pillow has no 16-bit colour modes
        if image_format == "PNG":
            png = _require("png", "writing a 16-bit colour PNG")
            writer = png.Writer(pixels.shape[1], pixels.shape[0], greyscale=channels == 2,
                                alpha=channels in (2, 4), bitdepth=16)
            writer.write(f, pixels.reshape(pixels.shape[0], -1))
        else:
            tifffile = _require("tifffile", "writing a 16-bit colour TIFF")
            tifffile.imwrite(f, pixels, photometric="minisblack" if channels == 2 else "rgb",
                             extrasamples=["unassalpha"] if channels in (2, 4) else None)
        return
    # Modes from the array: I;16 (16-bit gray), L, LA, RGB, RGBA.
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    options = {"quality": LOSSY_QUALITY} if image_format in ("JPEG", "WEBP") else {}
    image.save(f, format=image_format, **options)


def resize(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, height, width) by bicubic interpolation with antialiasing
    (a low-pass filter when shrinking, as PIL's resize), in float32, before quantisation."""
    if tensor.shape[-2:] == (height, width):
        return tensor
    return F.interpolate(tensor.float(), size=(height, width), mode="bicubic", antialias=True, align_corners=False)


def read_rgb(path: str | os.PathLike, rgb_range: float) -> torch.Tensor:
    """An image file as a (1, 3, H, W) float32 tensor in [0, rgb_range] (gray replicated to
    three channels, alpha dropped), as EDSR's benchmark loaders feed a network."""
    return read_image(path).rgb * rgb_range


def write_rgb(tensor: torch.Tensor, path: str | os.PathLike, rgb_range: float) -> None:
    """(1, 3, H, W) in [0, rgb_range] -> an 8-bit RGB file (EDSR's quantisation: scale, clamp,
    round), written atomically by ``write_image``."""
    pixels = (tensor[0].float() * (255.0 / rgb_range)).clamp(0, 255).round().to(torch.uint8)
    write_image(pixels.permute(1, 2, 0).cpu().numpy(), path)
