"""The results of every benchmark here: one configuration (`Config`), one measurement
(`Measurement`), and the tidy CSV they become, one row per metric (bench/README.md,
"Outputs"). sweep.csv and nlsn_*.csv share these columns; plots.py and table.py read them.
"""
from __future__ import annotations

import csv
import datetime
import math
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
CSV_COLUMNS = (
    "provider", "mode", "metric", "height", "width", "batch", "channels", "n_hashes",
    "chunk_size", "dtype", "status", "median", "p20", "p80", "device", "torch", "triton",
    "commit", "timestamp",
)
METRICS = ("time_ms", "peak_mem_mb")  # nlsn_*.csv adds "gflops"
# ok: measured; oom: ran out of memory; skipped: not run on purpose (no CUDA for Triton, a
# backward not implemented, predicted too slow, time budget spent); error: anything else;
# not_measured: fine, but this metric cannot be measured here (no /proc). The log says why.
STATUSES = ("ok", "oom", "skipped", "error", "not_measured")
MB = 2 ** 20  # memory is in MiB, as torch reports it (the CSV's metric keeps its name, peak_mem_mb)
INT_COLUMNS = ("height", "width", "batch", "channels", "n_hashes", "chunk_size")
VALUE_COLUMNS = ("median", "p20", "p80")


@dataclass(frozen=True)
class Config:
    """One measured configuration: the CSV's columns before `metric`."""

    provider: str
    mode: str
    height: int
    width: int
    channels: int
    n_hashes: int  # 0 for providers without hashing
    chunk_size: int  # 0 for providers without chunks
    dtype: str  # "float32", "float16", "bfloat16"
    batch: int = 1

    @property
    def pixels(self) -> int:
        return self.height * self.width

    def label(self) -> str:
        hashes = f" R={self.n_hashes}" if self.n_hashes else ""
        return f"{self.provider} {self.mode} {self.height}x{self.width} C={self.channels}{hashes} {self.dtype}"

    def series(self) -> tuple:
        """Everything but the size: a series' sizes run in increasing order."""
        return (self.provider, self.mode, self.channels, self.n_hashes, self.chunk_size, self.dtype, self.batch)


@dataclass
class Metric:
    status: str
    median: float | None = None
    p20: float | None = None
    p80: float | None = None

    def text(self, unit: str = "") -> str:
        if self.status != "ok":
            return self.status
        spread = f" [{self.p20:.3g}, {self.p80:.3g}]" if self.p20 is not None else ""
        return f"{self.median:.4g}{unit}{spread}"


@dataclass
class Measurement:
    """metric name -> Metric (time_ms and peak_mem_mb at least); reason: why not all ok."""

    metrics: dict = field(default_factory=dict)
    reason: str = ""

    @classmethod
    def failed(cls, status: str, reason: str = "") -> "Measurement":
        return cls({m: Metric(status) for m in METRICS}, reason)

    def __str__(self) -> str:
        parts = (f"{UNITS[n][0]} {m.text(UNITS[n][1])}".strip() for n, m in self.metrics.items())
        return " | ".join(parts) + (f"  ({self.reason})" if self.reason else "")


UNITS = {"time_ms": ("time", " ms"), "peak_mem_mb": ("mem", " MiB"), "gflops": ("", " GFLOPs")}  # progress lines


# ---------------------------------------------------------------------------- meta columns

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str, threads: int | None = None) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu: {cpu_model()} / {os.cpu_count()} cores / {threads or torch.get_num_threads()} torch threads"


def git_commit() -> str:
    """Short HEAD, '-dirty' when tracked files differ; '' outside git."""
    def git(*args):
        return subprocess.run(["git", "-C", str(BENCH_DIR.parent), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        return git("rev-parse", "--short=12", "HEAD") + ("-dirty" if git("status", "--porcelain", "-uno") else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def meta(device: str, threads: int | None) -> dict:
    """The device, torch, triton and commit columns."""
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - triton missing or broken: the column says so
        triton_version = ""
    return dict(device=device_name(device, threads), torch=torch.__version__, triton=triton_version,
                commit=git_commit())


def describe(columns: dict) -> str:
    """The first line of a run's log."""
    return (f"# device: {columns['device']}; torch {columns['torch']}, triton {columns['triton'] or '-'}, "
            f"commit {columns['commit'] or '-'}")


def device_slug(device: str) -> str:
    """'cpu', or the GPU's name as a folder name ('nvidia-h100-80gb-hbm3')."""
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-") if device == "cuda" else "cpu"


def results_dir(out: str | None, device: str, replace_committed: bool = False) -> Path:
    """Where a run writes, created: --out; with ``replace_committed``, the committed
    bench/results/<device-slug>/; by default a new bench/results/<device-slug>-<UTC time>/
    (git-ignored), so that a plain run never overwrites the committed results."""
    if out:
        path = Path(out)
    elif replace_committed:
        path = BENCH_DIR / "results" / device_slug(device)
    else:
        path = BENCH_DIR / "results" / f"{device_slug(device)}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------- the CSV

def _text(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class CsvWriter:
    """Writes rows as they come (flushed): an interrupted run keeps what it measured."""

    def __init__(self, path: Path, meta: dict):
        self.meta = meta
        self._file = open(path, "w", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=CSV_COLUMNS)
        self._csv.writeheader()

    def write(self, cfg: Config, m: Measurement) -> list[str]:
        """One row per metric of m; returns their statuses."""
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        for name, metric in m.metrics.items():
            ok = metric.status == "ok"
            row = dict(vars(cfg), metric=name, status=metric.status, timestamp=stamp, **self.meta,
                       **{k: getattr(metric, k) if ok else None for k in VALUE_COLUMNS})
            self._csv.writerow({k: _text(row[k]) for k in CSV_COLUMNS})
        self._file.flush()
        return [metric.status for metric in m.metrics.values()]

    def close(self) -> None:
        self._file.close()


def read_csv(path: Path) -> list[dict]:
    """Rows with numbers parsed (empty values: 0 for the integer columns, else None)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row.update({k: int(row[k] or 0) for k in INT_COLUMNS})
        row.update({k: float(row[k]) if row[k] else None for k in VALUE_COLUMNS})
    return rows
