"""``python -m nlsa_triton.evaluate``: the SR benchmark runner, and metrics for any SR images.

    python -m nlsa_triton.evaluate --weights W --data ROOT --sets Set5,Set14 --scale 2 --out DIR
        [--self-ensemble] [--seed N] [--device D] [--dtype float32|float16|bfloat16]
        [--save-images] [--backend B]
    python -m nlsa_triton.evaluate --sr SR_DIR --hr HR_DIR --scale 2 [--out DIR]

The first runs a checkpoint (any the trainer wrote, or any NLSN checkpoint, the authors'
included) on the benchmark layout (``core.py``), each image whole; only if memory runs out
is it tiled (halving the tile until it fits), which the output says and ``metrics.csv``
records. The second measures images another program made: each HR image ``<name>.<ext>``
is matched with the SR image ``<name>.<ext>`` or ``<name>_<anything>.<ext>`` (EDSR saves
``<name>_x2_SR.png``); an HR image larger than its SR image by less than ``scale`` pixels
is cropped to it (top-left, as EDSR's loader crops HR to a multiple of the scale).

PSNR-Y and SSIM-Y are ``nlsa_triton.metrics``'s. ``--out DIR`` gets ``metrics.csv`` (one
row per image) and ``<set>_x<scale>.md`` (per-image table, the mean, and the NLSN paper's
figures for that set and scale where it has them).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from .._backend import BACKENDS
from ..metrics import psnr_y, ssim_y
from ..upscale.errors import UpscaleError
from ..upscale.images import IMAGE_FORMATS, read_rgb, write_rgb
from .core import EvaluationError, ImageResult, find_benchmark_set, measure

#: NLSN (Mei et al., CVPR 2021), the quantitative comparison: Set5 PSNR-Y (dB) and SSIM-Y per scale.
PAPER = {("Set5", 2): (38.34, 0.9618), ("Set5", 3): (34.85, 0.9306), ("Set5", 4): (32.59, 0.9000)}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CSV_FIELDS = ("set", "image", "psnr_y", "ssim_y", "seconds", "peak_memory_mb", "tile")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nlsa_triton.evaluate",
                                description="PSNR-Y / SSIM-Y of an SR checkpoint on benchmark sets, "
                                            "or of SR images against HR images.")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), required=True)
    p.add_argument("--weights", type=Path, help="checkpoint (the trainer's model.pt/checkpoint.pt, or NLSN's)")
    p.add_argument("--data", type=Path, help="benchmark root: ROOT/<set>/HR, ROOT/<set>/LR_bicubic/X<scale>")
    p.add_argument("--sets", default="Set5,Set14,B100,Urban100,Manga109",
                   help="comma-separated sets under --data (default: the five of the SR papers)")
    p.add_argument("--sr", type=Path, help="folder of SR images (metrics only, with --hr)")
    p.add_argument("--hr", type=Path, help="folder of HR images (metrics only, with --sr)")
    p.add_argument("--out", type=Path, default=None, help="folder for metrics.csv and the tables")
    p.add_argument("--self-ensemble", action="store_true", help="average the 8 flips/transposes (EDSR's x8)")
    p.add_argument("--save-images", action="store_true", help="write the SR images to OUT/<set>/<name>_x<S>_SR.png")
    p.add_argument("--tile", type=int, default=0, metavar="PX",
                   help="run in PX x PX tiles of the LR image (10-pixel margins); 0 (default): whole images, "
                        "tiles only after an out-of-memory error")
    p.add_argument("--seed", type=int, default=0, help="seed of NLSA's rotations for every image (default 0)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="float16/bfloat16 need CUDA")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="NLSA backend")
    p.add_argument("--n-hashes", type=int, default=None, help="NLSA hash rounds (default: the checkpoint's, or 4)")
    p.add_argument("--chunk-size", type=int, default=None, help="NLSA chunk size (default: the checkpoint's, or 144)")
    p.add_argument("--quiet", action="store_true", help="only the summary")
    return p


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _match_sr(sr_dir: Path, hr: Path) -> Path:
    candidates = [p for p in sorted(sr_dir.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_FORMATS
                  and (p.stem == hr.stem or p.stem.startswith(hr.stem + "_"))]
    exact = [p for p in candidates if p.stem == hr.stem]
    if exact:
        return exact[0]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise EvaluationError(f"no SR image for {hr} in {sr_dir} (expected {hr.stem}.<ext> or {hr.stem}_*.<ext>)")
    raise EvaluationError(f"several SR images for {hr} in {sr_dir}: {', '.join(p.name for p in candidates)}")


def metrics_only(args) -> list[ImageResult]:
    for name in ("sr", "hr"):
        folder = getattr(args, name)
        if not folder.is_dir():
            raise EvaluationError(f"--{name} {folder}: not a folder")
    hrs = sorted(p for p in args.hr.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_FORMATS)
    if not hrs:
        raise EvaluationError(f"--hr {args.hr}: no images")
    # The set's name: the HR folder's, or its parent's for the benchmark layout's <set>/HR.
    set_name = args.hr.resolve().parent.name if args.hr.name == "HR" else args.hr.name
    results = []
    for hr_path in hrs:
        sr_path = _match_sr(args.sr, hr_path)
        sr, hr = read_rgb(sr_path, 255), read_rgb(hr_path, 255)
        (sh, sw), (hh, hw) = sr.shape[-2:], hr.shape[-2:]
        if not (0 <= hh - sh < args.scale and 0 <= hw - sw < args.scale):
            raise EvaluationError(f"{sr_path} is {sw}x{sh} but {hr_path} is {hw}x{hh} (the HR image may exceed "
                                  f"the SR one by less than --scale {args.scale} pixels only)")
        hr = hr[..., :sh, :sw]
        results.append(ImageResult(set_name, hr_path.stem, psnr_y(sr, hr, args.scale), ssim_y(sr, hr, args.scale),
                                   0.0, 0.0, None))
        if not args.quiet:
            _log(f"{hr_path.stem}: PSNR-Y {results[-1].psnr_y:.3f} dB, SSIM-Y {results[-1].ssim_y:.4f}")
    return results


def benchmark(args) -> list[ImageResult]:
    from ..models.variants import load_model

    sets = [name for name in args.sets.split(",") if name]
    images = {name: find_benchmark_set(args.data, name, args.scale) for name in sets}  # all checked first
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    if dtype != torch.float32 and device.type != "cuda":
        raise EvaluationError(f"--dtype {args.dtype} needs a CUDA --device (got {device})")
    try:
        model = load_model(args.weights, backend=args.backend, n_hashes=args.n_hashes, chunk_size=args.chunk_size)
    except (OSError, ValueError) as e:
        raise EvaluationError(f"--weights: {e}") from e
    if model.scale != args.scale:
        raise EvaluationError(f"--scale {args.scale} does not match the checkpoint, which is x{model.scale}")
    model = model.to(device=device, dtype=dtype).eval()
    if not args.quiet:
        _log(f"{model.__class__.__name__}({model.extra_repr()}) on {device}, {args.dtype}"
             f"{', self-ensemble x8' if args.self_ensemble else ''}, seed {args.seed}")
    results = []
    for name, entries in images.items():
        for image in entries:
            result, sr = measure(model, name, image, args.scale, model.rgb_range, device=device, dtype=dtype,
                                 self_ensemble=args.self_ensemble, seed=args.seed, tile=args.tile or None,
                                 read_image=read_rgb, log=_log)
            results.append(result)
            if args.save_images:
                folder = args.out / name
                folder.mkdir(parents=True, exist_ok=True)
                write_rgb(sr, folder / f"{image.name}_x{args.scale}_SR.png", model.rgb_range)
            if not args.quiet:
                fell_back = result.tile and result.tile != args.tile
                tiled = (f", in tiles of {result.tile} px after running out of memory" if fell_back
                         else f", in tiles of {result.tile} px" if result.tile else "")
                _log(f"{name}/{image.name}: PSNR-Y {result.psnr_y:.3f} dB, SSIM-Y {result.ssim_y:.4f}, "
                     f"{result.seconds:.2f} s{tiled}")
    return results


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def write_outputs(results: list[ImageResult], out: Path, scale: int, label: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in results:
            writer.writerow([r.set, r.image, f"{r.psnr_y:.4f}", f"{r.ssim_y:.6f}", f"{r.seconds:.3f}",
                             f"{r.peak_memory_mb:.0f}", r.tile or ""])
    for name in dict.fromkeys(r.set for r in results):
        rows = [r for r in results if r.set == name]
        lines = [f"# {name} x{scale}: {label}", "", "| image | PSNR-Y (dB) | SSIM-Y |", "|---|---:|---:|"]
        lines += [f"| {r.image} | {r.psnr_y:.3f} | {r.ssim_y:.4f} |" for r in rows]
        lines.append(f"| **mean** | **{_mean(r.psnr_y for r in rows):.3f}** | **{_mean(r.ssim_y for r in rows):.4f}** |")
        if (name, scale) in PAPER:
            psnr, ssim = PAPER[(name, scale)]
            lines.append(f"| NLSN paper | {psnr:.2f} | {ssim:.4f} |")
        (out / f"{name}_x{scale}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    metrics_mode = args.sr is not None or args.hr is not None
    if metrics_mode and (args.sr is None or args.hr is None):
        parser.error("--sr and --hr go together")
    if metrics_mode and (args.weights or args.data):
        parser.error("give either --sr/--hr (metrics only) or --weights/--data (run a checkpoint), not both")
    if not metrics_mode and (args.weights is None or args.data is None):
        parser.error("--weights and --data are required (or --sr and --hr for the metrics alone)")
    if args.tile < 0:
        parser.error(f"--tile must be >= 0, got {args.tile}")
    if args.save_images and args.out is None:
        parser.error("--save-images needs --out")
    try:
        results = metrics_only(args) if metrics_mode else benchmark(args)
    except (EvaluationError, UpscaleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    label = f"{args.sr}" if metrics_mode else f"{args.weights}{' (self-ensemble x8)' if args.self_ensemble else ''}"
    for name in dict.fromkeys(r.set for r in results):
        rows = [r for r in results if r.set == name]
        paper = PAPER.get((name, args.scale))
        beside = f" (NLSN paper: {paper[0]:.2f} dB / {paper[1]:.4f})" if paper else ""
        print(f"{name} x{args.scale}: {len(rows)} images, PSNR-Y {_mean(r.psnr_y for r in rows):.3f} dB, "
              f"SSIM-Y {_mean(r.ssim_y for r in rows):.4f}{beside}")
    if args.out is not None:
        write_outputs(results, args.out, args.scale, label)
        print(f"wrote {args.out / 'metrics.csv'} and {len(dict.fromkeys(r.set for r in results))} table(s) in {args.out}")
    return 0
