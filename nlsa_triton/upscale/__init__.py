"""Upscale images with an NLSN checkpoint, with the conventions of Real-ESRGAN's and EDSR's scripts.

    python -m nlsa_triton.upscale -i IN -o OUT --weights W [--suffix S] [--ext {auto,png,jpg,tif}]
        [--outscale F] [--tile PX] [--tile-pad PX] [--dtype {float32,float16,bfloat16}]
        [--device D] [--seed N] [--skip-existing] [--quiet] ...
    python -m nlsa_triton.upscale IN OUT --weights W ...        (the same, positionally)

- IN is an image or a folder of images (PNG, JPEG, WebP, BMP, TIFF). Each output keeps
  what its input is (``images.py``): gray stays gray (the network runs on it replicated
  to RGB, and the output's luma is kept), alpha is upscaled bicubically and kept, 16-bit
  PNG and TIFF stay 16-bit. A folder's other entries are counted as skipped, with the
  reason, in the summary. OUT is a folder (created if needed; default ``results``), where
  each output is ``<name>_<suffix>.<ext>``, or, for a single input, a file (any of the
  extensions above) whose extension picks the format.
- The network's configuration (scale, n_feats, n_resblocks, rgb_range) is read from the
  checkpoint (``NLSN.from_file``: bare, wrapped or DataParallel-prefixed state dicts in
  .pt/.pth, or .safetensors). n_hashes / chunk_size / res_scale are not stored in
  checkpoints; the defaults are the paper's (4, 144, 0.1).
- rgb_range: the pixel range the network was trained on, stored in the checkpoint
  (``sub_mean.bias = -rgb_range * DIV2K mean``); ``--rgb-range`` overrides it, with a
  warning when it disagrees.
- ``--seed`` seeds the ``torch.Generator`` the NLSA blocks draw their LSH rotations from,
  afresh for each image, so the same command gives the same outputs. Without it,
  rotations are fresh on every run, as in NLSN.
- The whole image goes through in one piece unless ``--tile PX`` is given, or the device
  runs out of memory: then it is cut into PX x PX tiles (LR pixels), each run with a
  margin of ``--tile-pad`` pixels (EDSR's chop uses 10) that is cropped away afterwards.
  NLSA is non-local, so a tiled result is close to, not equal to, the whole-image one. On
  an out-of-memory error (CUDA's or the CPU allocator's) the image is retried in tiles,
  halving the tile size until it fits or falls below 16 pixels.
- Nothing is lost or clobbered: each output is written to a temporary file and renamed
  into place; a run that would overwrite an input, or write two inputs to one output, is
  refused before it starts; a folder run goes on past an image it cannot read or write,
  names it, and exits 1; ``--skip-existing`` resumes an interrupted run.

Results (a line per image, a one-line summary: files, seconds, upscaled, skipped with
reasons, failed) go to stdout; progress, warnings and errors to stderr. Progress counts the
network's stages (each module of NLSN's body, then the tail) over all tiles: a bar when
stderr is a terminal, else a line at most every 30 s. ``--quiet`` keeps only errors and
warnings.

Exit status: 0 on success, 1 when any image failed or the run was refused (message on
stderr), 2 on bad arguments. Needs the ``cli`` extra (Pillow, tqdm; safetensors for
.safetensors checkpoints): ``pip install 'nlsa-triton[cli]'``.

The modules: ``cli`` (arguments and the run), ``paths`` (which file goes where),
``images`` (reading, resizing, writing), ``tiling`` (tiles and the out-of-memory retry),
``progress`` (what goes to stdout and stderr, tqdm).
"""
from .cli import build_parser, main, parse_args, run
from .errors import UpscaleError
from .images import Picture, output_pixels, read_image, resize, write_image
from .tiling import MIN_AUTO_TILE, upscale_tensor, upscale_with_fallback

__all__ = [
    "main", "build_parser", "parse_args", "run", "UpscaleError", "Picture", "read_image", "output_pixels",
    "resize", "write_image",
    "MIN_AUTO_TILE", "upscale_tensor", "upscale_with_fallback",
]
