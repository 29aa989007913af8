"""Which files go where: the inputs of a file or folder, and each one's output path.

Every check that can refuse the run happens here, before a checkpoint is loaded: a missing
input, an output that would overwrite an input, two inputs written to one output.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UpscaleError
from .images import FORMAT_NAMES, IMAGE_FORMATS

#: ``--ext`` choices: "auto" keeps each input's extension (PNG for one Pillow reads but
#: the upscaler does not write), the others force one.
EXTENSIONS = {"auto": None, "png": ".png", "jpg": ".jpg", "tif": ".tif"}


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


@dataclass(frozen=True)
class Skip:
    """An entry of an input folder that is not upscaled, and why."""
    source: Path
    reason: str


def plan(source: Path, target: Path, *, suffix: str, ext: str) -> tuple[list[Job], list[Skip]]:
    """The (input, output) pairs of a run, and the entries of an input folder left out.

    ``source`` is an image file or a folder (its PNG, JPEG, WebP, BMP and TIFF files; every
    other entry, a subfolder included, is returned as a ``Skip`` with its reason). ``target`` is a file when ``source`` is a file and ``target`` has an image
    extension and is not an existing folder; otherwise it is a folder, in which each output
    is named ``<input stem>_<suffix>.<ext>`` (``<input stem>.<ext>`` for an empty suffix).
    """
    if source.is_dir():
        sources, skips = [], []
        for p in sorted(source.iterdir()):
            if p.is_dir():
                skips.append(Skip(p, "a subfolder"))
            elif p.suffix.lower() not in IMAGE_FORMATS:
                skips.append(Skip(p, "not an image extension"))
            else:
                sources.append(p)
        if not sources:
            raise UpscaleError(f"--input {source}: no {FORMAT_NAMES} images in this folder")
    elif source.is_file():
        sources, skips = [source], []
    else:
        raise UpscaleError(f"--input {source}: no such file or folder")

    names_a_file = target.suffix.lower() in IMAGE_FORMATS and not target.is_dir()
    if names_a_file and source.is_dir():
        raise UpscaleError(f"--output {target} names a file, but --input {source} is a folder: give an output folder")
    if names_a_file:
        forced = EXTENSIONS[ext]
        if forced is not None and IMAGE_FORMATS[forced] != IMAGE_FORMATS[target.suffix.lower()]:
            raise UpscaleError(f"--ext {ext} contradicts the output file name {target}")
        if not target.parent.is_dir():
            raise UpscaleError(f"--output {target}: output folder does not exist: {target.parent}")
        jobs = [Job(source, target)]
    else:
        if target.exists() and not target.is_dir():
            raise UpscaleError(f"--output {target} is an existing file without an image extension; give a folder")
        jobs = [Job(p, target / output_name(p, suffix, ext)) for p in sources]
    _refuse_clobbering(jobs)
    return jobs, skips


def output_name(source: Path, suffix: str, ext: str) -> str:
    extension = EXTENSIONS[ext] or (source.suffix if source.suffix.lower() in IMAGE_FORMATS else ".png")
    return f"{source.stem}_{suffix}{extension}" if suffix else f"{source.stem}{extension}"


def _refuse_clobbering(jobs: list[Job]) -> None:
    inputs = {_identity(job.source): job.source for job in jobs}
    seen: dict[Path, Path] = {}
    for job in jobs:
        if _identity(job.target) in inputs:
            raise UpscaleError(
                f"--output: refusing to overwrite the input {inputs[_identity(job.target)]}; "
                "choose another --output folder, --suffix or --ext"
            )
        if job.target in seen:
            raise UpscaleError(
                f"--output: {seen[job.target]} and {job.source} would both be written to {job.target}; "
                "use --ext auto or rename one"
            )
        seen[job.target] = job.source


def _identity(path: Path):
    """What makes two paths one file: device and inode when it exists (links, case-insensitive
    file systems), else the absolute path."""
    try:
        stat = os.stat(path)
    except OSError:
        return Path(os.path.abspath(path))
    return (stat.st_dev, stat.st_ino)
