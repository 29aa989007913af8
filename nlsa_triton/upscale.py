"""Upscale an image with an NLSN checkpoint.

    python -m nlsa_triton.upscale INPUT OUTPUT --weights W.pt [--scale S] [--seed N]
        [--device D] [--tile PX] [--tile-overlap PX] [--rgb-range R] [--backend B]

Reads a PNG or JPEG (any mode Pillow reads; converted to RGB, alpha dropped), runs the
NLSN whose configuration (scale, n_feats, n_resblocks, rgb_range) is read from the
checkpoint's tensor shapes, and writes a PNG ``scale`` times larger.

- rgb_range: the pixel range the network was trained on. It is stored in the checkpoint
  (``sub_mean.bias = -rgb_range * DIV2K mean``) and read from there by default; the
  authors' published commands train and test NLSN with ``--rgb_range 1``. ``--rgb-range``
  overrides it (with a warning when it disagrees with the checkpoint).
- n_hashes / chunk_size / res_scale are not stored in checkpoints; the defaults are the
  paper's (4, 144, 0.1).
- ``--seed`` seeds the ``torch.Generator`` the NLSA blocks draw their LSH rotations from,
  so the same command gives the same output. Without it, rotations are fresh on every
  run, as in NLSN.
- The whole image goes through in one piece unless ``--tile PX`` is given, or the device
  runs out of memory: then it is cut into PX x PX tiles (LR pixels), each run with a
  margin of ``--tile-overlap`` pixels (EDSR's chop uses 10) that is cropped away
  afterwards. NLSA is non-local, so a tiled result is close to, not equal to, the
  whole-image one. On an out-of-memory error (CUDA's or the CPU allocator's) the image is
  retried in tiles, halving the tile size until it fits or falls below 16 pixels.

Exit status: 0 on success, 1 on an error (message on stderr), 2 on bad arguments.
Needs Pillow (``pip install 'nlsa-triton[cli]'``).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from ._backend import BACKENDS, resolve_backend
from ._oom import is_out_of_memory
from .models import NLSN

MIN_AUTO_TILE = 16


class UpscaleError(Exception):
    """An error reported to the user as ``error: <message>`` with exit status 1."""


# -- image I/O --------------------------------------------------------------------------

def _pil():
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:  # pragma: no cover - exercised by monkeypatching in the tests
        raise UpscaleError(
            "reading and writing images needs Pillow, which is not installed; "
            "install it with: pip install 'nlsa-triton[cli]'  (or: pip install pillow)"
        ) from e
    return Image, UnidentifiedImageError


def read_image(path: Path, rgb_range: float) -> torch.Tensor:
    """An RGB image as a (1, 3, H, W) float32 tensor in [0, rgb_range]."""
    import numpy as np

    Image, UnidentifiedImageError = _pil()
    if not path.is_file():
        raise UpscaleError(f"input image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise UpscaleError(f"cannot read {path} as an image (PNG or JPEG expected): {e}") from e
    array = np.asarray(rgb, dtype=np.float32)  # (H, W, 3), 0..255
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)
    return tensor / 255.0 * rgb_range


def write_png(tensor: torch.Tensor, path: Path, rgb_range: float) -> None:
    """(1, 3, H, W) in [0, rgb_range] -> 8-bit RGB PNG (EDSR's quantisation: scale, clamp, round)."""
    Image, _ = _pil()
    pixels = (tensor[0].float() * (255.0 / rgb_range)).clamp(0, 255).round().to(torch.uint8)
    array = pixels.permute(1, 2, 0).contiguous().cpu().numpy()
    try:
        Image.fromarray(array).save(path, format="PNG")
    except OSError as e:
        raise UpscaleError(f"cannot write {path}: {e}") from e


# -- checkpoint -------------------------------------------------------------------------

def load_model(
    weights: Path, *, n_hashes: int = 4, chunk_size: int = 144, res_scale: float = 0.1, backend: str = "auto"
) -> NLSN:
    """NLSN.from_state_dict on a .pt file, with user-facing errors."""
    if not weights.is_file():
        raise UpscaleError(f"weights file not found: {weights}")
    try:
        obj = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a non-checkpoint file
        raise UpscaleError(
            f"cannot load {weights} as a PyTorch checkpoint (torch.load with weights_only=True): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    try:
        return NLSN.from_state_dict(
            obj, n_hashes=n_hashes, chunk_size=chunk_size, res_scale=res_scale, backend=backend
        )
    except ValueError as e:
        raise UpscaleError(f"{weights}: {e}") from e


# -- running the network ----------------------------------------------------------------

def _tiles(size: int, tile: int) -> list[tuple[int, int]]:
    return [(start, min(start + tile, size)) for start in range(0, size, tile)]


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.done = total, enabled, 0
        self.tty = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()

    def step(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = width * self.done // self.total
        line = (
            f"tiles [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{time.perf_counter() - self.start:.1f}s"
        )
        if self.tty:
            print("\r" + line, end="\n" if self.done == self.total else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def upscale_tensor(
    model: NLSN,
    lr: torch.Tensor,
    *,
    tile: int | None = None,
    overlap: int = 10,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run ``model`` on lr (N, 3, H, W), whole or in tiles of ``tile`` x ``tile`` LR pixels.

    Each tile is run with up to ``overlap`` extra pixels on every side (clipped at the
    border), and only its own region, times the scale, is kept. Tiles are run in
    row-major order, drawing rotations from ``generator`` in that order.
    """
    with torch.no_grad():
        if tile is None:
            return model(lr, generator=generator)
        n, c, h, w = lr.shape
        s = model.scale
        out = lr.new_empty((n, c, h * s, w * s))
        tiles = [(ys, xs) for ys in _tiles(h, tile) for xs in _tiles(w, tile)]
        bar = _Progress(len(tiles), progress)
        for (y0, y1), (x0, x1) in tiles:
            py0, py1 = max(0, y0 - overlap), min(h, y1 + overlap)
            px0, px1 = max(0, x0 - overlap), min(w, x1 + overlap)
            sr = model(lr[:, :, py0:py1, px0:px1], generator=generator)
            out[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = sr[
                :, :, (y0 - py0) * s:(y1 - py0) * s, (x0 - px0) * s:(x1 - px0) * s
            ]
            bar.step()
        return out


def upscale_with_fallback(
    model: NLSN,
    lr: torch.Tensor,
    *,
    tile: int | None,
    overlap: int,
    seed: int | None,
    progress: bool,
) -> torch.Tensor:
    """``upscale_tensor``, retried in smaller tiles on out-of-memory errors.

    Each attempt starts from a freshly seeded generator, so the result depends on the
    seed and the tiling only.
    """

    def generator() -> torch.Generator | None:
        return None if seed is None else torch.Generator(device=lr.device).manual_seed(seed)

    while True:
        try:
            return upscale_tensor(model, lr, tile=tile, overlap=overlap, generator=generator(), progress=progress)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            if lr.is_cuda:
                torch.cuda.empty_cache()
            current = tile or max(lr.shape[-2:])
            next_tile = 1 << max(0, math.ceil(math.log2(current)) - 1)  # next power of two below
            if next_tile < MIN_AUTO_TILE:
                tried = f"in tiles of {tile} x {tile} pixels" if tile else "on the whole image"
                hint = "; try --device cpu" if lr.is_cuda else ""
                raise UpscaleError(f"out of memory on {lr.device} even {tried}{hint}") from e
            tile = next_tile
            print(f"out of memory on {lr.device}; retrying in tiles of {tile} x {tile} pixels "
                  f"(overlap {overlap})", file=sys.stderr, flush=True)


# -- command line -----------------------------------------------------------------------

def _number_at_least(kind: type, low, *, strict: bool = False):
    """An argparse type: a ``kind`` number >= low (> low when ``strict``)."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value > low if strict else value >= low):  # NaN fails too
            raise argparse.ArgumentTypeError(f"expected {what} {'>' if strict else '>='} {low}, got {text}")
        return value

    return parse


_positive_int = _number_at_least(int, 1)
_non_negative_int = _number_at_least(int, 0)
_positive_float = _number_at_least(float, 0, strict=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nlsa_triton.upscale",
        description="Super-resolve an image (PNG/JPEG in, PNG out) with an NLSN checkpoint.",
    )
    p.add_argument("input", type=Path, help="low-resolution image (PNG or JPEG)")
    p.add_argument("output", type=Path, help="where to write the upscaled PNG")
    p.add_argument("--weights", type=Path, required=True,
                   help="NLSN checkpoint (.pt state_dict, e.g. the authors' model_x2.pt)")
    p.add_argument("--scale", type=_positive_int, default=None,
                   help="expected scale; the checkpoint fixes it, this only checks it")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the LSH rotations generator (reproducible output); "
                        "default: fresh rotations each run, as NLSN")
    p.add_argument("--device", default=None,
                   help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="NLSA backend: triton (CUDA), torch (reference), auto (default)")
    p.add_argument("--tile", type=_positive_int, default=None, metavar="PX",
                   help="process in PX x PX tiles of the input (default: whole image, "
                        "tiles only after an out-of-memory error)")
    p.add_argument("--tile-overlap", type=_non_negative_int, default=10, metavar="PX",
                   help="margin each tile is run with, then cropped (default 10, as EDSR's chop)")
    p.add_argument("--rgb-range", type=_positive_float, default=None,
                   help="pixel range the network expects (default: read from the checkpoint's "
                        "mean shift; the authors' models use 1)")
    p.add_argument("--n-hashes", type=_positive_int, default=4, help="NLSA hash rounds (default 4)")
    p.add_argument("--chunk-size", type=_positive_int, default=144, help="NLSA chunk size (default 144)")
    p.add_argument("--res-scale", type=float, default=0.1, help="residual scaling (default 0.1)")
    p.add_argument("--quiet", action="store_true", help="no progress or summary on stderr")
    return p


def run(args: argparse.Namespace) -> None:
    _pil()  # fail early, before loading a large checkpoint, if Pillow is missing
    if not args.input.is_file():
        raise UpscaleError(f"input image not found: {args.input}")
    if not args.output.parent.is_dir():
        raise UpscaleError(f"output folder does not exist: {args.output.parent}")
    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device_name)
    except RuntimeError as e:
        raise UpscaleError(f"invalid --device {device_name!r}: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UpscaleError("--device cuda was asked for but CUDA is not available")

    model = load_model(
        args.weights, n_hashes=args.n_hashes, chunk_size=args.chunk_size,
        res_scale=args.res_scale, backend=args.backend,
    )
    if args.scale is not None and args.scale != model.scale:
        raise UpscaleError(f"--scale {args.scale} does not match the checkpoint, which is x{model.scale}")
    rgb_range = model.rgb_range
    if args.rgb_range is not None:
        if not math.isclose(args.rgb_range, model.rgb_range, rel_tol=1e-3):
            print(f"warning: --rgb-range {args.rgb_range:g} differs from the checkpoint's "
                  f"{model.rgb_range:g} (its mean shift was trained for that range)", file=sys.stderr)
        rgb_range = args.rgb_range

    lr = read_image(args.input, rgb_range)
    if args.output.suffix.lower() != ".png" and not args.quiet:
        print(f"note: {args.output} is written as PNG", file=sys.stderr)
    try:
        model = model.to(device).eval()
        lr = lr.to(device)
        sr = upscale_with_fallback(
            model, lr, tile=args.tile, overlap=args.tile_overlap, seed=args.seed,
            progress=not args.quiet,
        )
    except ValueError as e:  # e.g. backend="triton" on a CPU tensor
        raise UpscaleError(str(e)) from e
    except Exception as e:  # an OOM the tile fallback could not avoid, e.g. moving the weights
        if not is_out_of_memory(e):
            raise
        detail = str(e).split("\n", 1)[0] or type(e).__name__
        raise UpscaleError(f"out of memory on {device}: {detail}") from e
    write_png(sr, args.output, rgb_range)
    if not args.quiet:
        _, _, h, w = lr.shape
        print(f"{args.input} ({w}x{h}) -> {args.output} ({w * model.scale}x{h * model.scale}), "
              f"NLSN x{model.scale}, n_feats {model.n_feats}, n_resblocks {model.n_resblocks}, "
              f"rgb_range {rgb_range:g}, {device}, NLSA backend {resolve_backend(model.backend, lr)}",
              file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UpscaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
