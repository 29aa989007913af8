"""The command line: arguments, the run over the images, the one-line summary."""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from .._backend import BACKENDS, resolve_backend
from .._oom import is_out_of_memory
from ..models import NLSN
from ..pretrained import resolve_weights
from . import paths, progress
from .errors import UpscaleError
from .images import FORMAT_NAMES, output_pixels, read_image, require_pillow, write_image
from .tiling import upscale_with_fallback

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_OUTPUT = "results"  # Real-ESRGAN's default output folder
DEFAULT_SUFFIX = "out"  # and its default suffix


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
        description=f"Super-resolve images ({FORMAT_NAMES}) with an NLSN checkpoint. Gray stays gray, "
                    "alpha is kept (upscaled bicubically), 16-bit PNG and TIFF stay 16-bit. Results go to "
                    "stdout, progress and diagnostics to stderr.",
    )
    p.add_argument("input_positional", nargs="?", type=Path, metavar="IN", help="same as -i/--input")
    p.add_argument("output_positional", nargs="?", type=Path, metavar="OUT", help="same as -o/--output")
    p.add_argument("-i", "--input", type=Path, help="an image, or a folder of images (not its subfolders)")
    p.add_argument("-o", "--output", type=Path,
                   help=f"output folder (default {DEFAULT_OUTPUT}/), or an output file for a single input")
    p.add_argument("--weights", type=Path, default=None,
                   help="NLSN checkpoint: .pt/.pth (bare or wrapped state_dict) or .safetensors "
                        "(default: the small x2 model shipped with the package, nlsa_triton.pretrained)")
    p.add_argument("--suffix", default=DEFAULT_SUFFIX,
                   help=f"outputs in a folder are named <name>_<suffix>.<ext> (default {DEFAULT_SUFFIX!r}; "
                        "'' for <name>.<ext>)")
    p.add_argument("--ext", choices=sorted(paths.EXTENSIONS), default="auto",
                   help="output format in a folder: auto keeps the input's (default), png, jpg, tif")
    p.add_argument("--outscale", type=_positive_float, default=None,
                   help="final scale, reached by a bicubic antialiased resize of the network's output "
                        "(default: the checkpoint's scale)")
    p.add_argument("--scale", type=_positive_int, default=None,
                   help="expected network scale; the checkpoint fixes it, this only checks it")
    p.add_argument("--tile", type=_non_negative_int, default=0, metavar="PX",
                   help="process in PX x PX tiles of the input; 0 (default): the whole image, in tiles "
                        "only after an out-of-memory error")
    p.add_argument("--tile-pad", "--tile-overlap", dest="tile_pad", type=_non_negative_int, default=10,
                   metavar="PX", help="margin each tile is run with, then cropped (default 10, as EDSR's chop)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="weights and activations; float16 and bfloat16 need a CUDA device")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the LSH rotations, the same for every image (reproducible output); "
                        "default: fresh rotations each run, as NLSN")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="NLSA backend (default auto: the Triton kernels on CUDA)")
    p.add_argument("--rgb-range", type=_positive_float, default=None,
                   help="pixel range the network expects (default: read from the checkpoint's "
                        "mean shift; the authors' models use 1)")
    p.add_argument("--n-hashes", type=_positive_int, default=4, help="NLSA hash rounds (default 4)")
    p.add_argument("--chunk-size", type=_positive_int, default=144, help="NLSA chunk size (default 144)")
    p.add_argument("--res-scale", type=float, default=0.1, help="residual scaling (default 0.1)")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave images whose output already exists (resumes an interrupted folder run)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress, per-image lines or summary; errors and warnings are still printed")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, with the positional ``IN [OUT]`` form folded into ``input``/``output``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, flags in (("input", "IN and -i/--input"), ("output", "OUT and -o/--output")):
        positional = getattr(args, f"{name}_positional")
        if positional is not None and getattr(args, name) is not None:
            parser.error(f"the {name} is given twice ({flags})")
        if positional is not None:
            setattr(args, name, positional)
    if args.input is None:
        parser.error("an input is required: -i/--input FILE_OR_FOLDER (or IN)")
    if args.output is None:
        args.output = Path(DEFAULT_OUTPUT)
    args.weights = resolve_weights(args.weights, quiet=args.quiet)
    return args


def _device(name: str | None) -> torch.device:
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UpscaleError(f"invalid --device {name!r}: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UpscaleError("--device cuda was asked for but CUDA is not available")
    return device


def _dtype(name: str, device: torch.device) -> torch.dtype:
    dtype = DTYPES[name]
    if dtype != torch.float32 and device.type != "cuda":
        # Measured with torch 2.13: a small NLSN runs about 20x slower in float16 or
        # bfloat16 than in float32 on the CPU, whose convolutions have no fast half path.
        raise UpscaleError(f"--dtype {name} needs a CUDA --device (got {device}); use --dtype float32")
    return dtype


def _load_model(args: argparse.Namespace) -> NLSN:
    try:
        model = NLSN.from_file(
            args.weights, n_hashes=args.n_hashes, chunk_size=args.chunk_size,
            res_scale=args.res_scale, backend=args.backend,
        )
    except (OSError, ValueError, ImportError) as e:
        raise UpscaleError(f"--weights: {e}") from e
    if args.scale is not None and args.scale != model.scale:
        raise UpscaleError(f"--scale {args.scale} does not match the checkpoint, which is x{model.scale}")
    return model


def _rgb_range(args: argparse.Namespace, model: NLSN) -> float:
    if args.rgb_range is None:
        return model.rgb_range
    if not math.isclose(args.rgb_range, model.rgb_range, rel_tol=1e-3):
        progress.log(f"warning: --rgb-range {args.rgb_range:g} differs from the checkpoint's "
                     f"{model.rgb_range:g} (its mean shift was trained for that range)")
    return args.rgb_range


def _out_of_memory(error: Exception, device: torch.device) -> str:
    """An allocator's out-of-memory error in one line (CUDA's adds paragraphs of advice)."""
    lines = str(error).splitlines()
    return f"out of memory on {device}: {lines[0] if lines else type(error).__name__}"


def _upscale_one(job: paths.Job, model: NLSN, args: argparse.Namespace, *, rgb_range: float,
                 device: torch.device, dtype: torch.dtype) -> str:
    """Upscale one image into its output file; returns the line that reports it."""
    picture = read_image(job.source)
    _, _, h, w = picture.rgb.shape
    outscale = args.outscale or model.scale
    height, width = (max(1, int(size * outscale + 0.5)) for size in (h, w))  # nearest, halves up
    try:
        sr = upscale_with_fallback(
            model, (picture.rgb * rgb_range).to(device=device, dtype=dtype), tile=args.tile or None,
            tile_pad=args.tile_pad, seed=args.seed, quiet=args.quiet, desc=str(job.source),
        )
        pixels = output_pixels(picture, sr, rgb_range, height, width)
    except UpscaleError as e:  # the fallback's own out-of-memory error, which names no file
        raise UpscaleError(f"{job.source}: {e}") from e
    except Exception as e:  # an OOM the tile fallback does not cover: moving the image, the resize
        if not is_out_of_memory(e):
            raise
        raise UpscaleError(f"{job.source}: {_out_of_memory(e, device)}") from e
    dropped = write_image(pixels, job.target)
    if dropped:
        progress.log(f"warning: {job.target}: its format holds no {' and no '.join(dropped)}; "
                     f"{' and '.join(dropped)} of {job.source} dropped")
    return f"{job.source} ({w}x{h}, {picture.describe()}) -> {job.target} ({width}x{height})"


def _skipped(skips: list[paths.Skip]) -> str:
    """`` (reason: a, b; reason: c)``: the skipped entries by reason, at most 5 names each."""
    by_reason: dict[str, list[str]] = {}
    for skip in skips:
        by_reason.setdefault(skip.reason, []).append(skip.source.name)
    parts = []
    for reason, names in by_reason.items():
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        parts.append(f"{reason}: {', '.join(names[:5])}{more}")
    return f" ({'; '.join(parts)})" if parts else ""


def run(args: argparse.Namespace) -> int:
    """Upscale every input; the exit status: 0, or 1 when any image failed."""
    require_pillow()  # fail early, before loading a large checkpoint, if an extra is missing
    progress.require_tqdm()
    jobs, skips = paths.plan(args.input, args.output, suffix=args.suffix, ext=args.ext)
    device = _device(args.device)
    dtype = _dtype(args.dtype, device)
    model = _load_model(args)
    rgb_range = _rgb_range(args, model)
    try:
        backend = resolve_backend(model.backend, torch.zeros((), device=device, dtype=dtype))
    except (ValueError, TypeError, RuntimeError) as e:  # triton on the CPU, or not installed
        raise UpscaleError(f"--backend {args.backend}: {e}") from e
    try:
        model = model.to(device=device, dtype=dtype).eval()
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        raise UpscaleError(_out_of_memory(e, device)) from e
    if not args.quiet:
        outscale = f", outscale {args.outscale:g}" if args.outscale else ""
        progress.log(f"NLSN x{model.scale}, n_feats {model.n_feats}, n_resblocks {model.n_resblocks}, "
                     f"rgb_range {rgb_range:g}, {device}, {args.dtype}, NLSA backend {backend}{outscale}")
    for folder in {job.target.parent for job in jobs}:
        folder.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    failed: list[Path] = []
    upscaled, total = 0, len(jobs) + len(skips)  # skips: the folder's entries that are not images
    with progress.bar(len(jobs), desc="images", unit="image", quiet=args.quiet or len(jobs) == 1) as images:
        for job in jobs:
            if args.skip_existing and job.target.exists():
                skips.append(paths.Skip(job.source, "output exists (--skip-existing)"))
            else:
                try:
                    report = _upscale_one(job, model, args, rgb_range=rgb_range, device=device, dtype=dtype)
                    upscaled += 1
                    if not args.quiet:
                        progress.result(report)
                except UpscaleError as e:
                    failed.append(job.source)
                    progress.log(f"error: {e}")
            images.update()
    if not args.quiet:
        names = f" ({', '.join(map(str, failed))})" if failed else ""
        progress.result(f"{total} file{'s' if total != 1 else ''} in {time.perf_counter() - started:.1f} s: "
                        f"{upscaled} upscaled, {len(skips)} skipped{_skipped(skips)}, {len(failed)} failed{names}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UpscaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
