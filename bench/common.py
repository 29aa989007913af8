"""Shared helpers of the benchmark sweep: CSV layout, device facts, timing, memory, OOM.

GPU: time with ``triton.testing.do_bench`` (median, p20, p80), memory as the peak
allocated by the call minus what was allocated before it (inputs excluded).
CPU: time as the median (p20, p80) of ``time.perf_counter`` repeats after one warm-up
call; memory as the peak resident-set growth of the call in a fresh process
(``bench/cpu_worker.py``), read from /proc/self/status.
"""
from __future__ import annotations

import argparse

import csv
import datetime as _dt
import gc
import math
import os
import re
import subprocess
import time
from pathlib import Path

import torch

from nlsa_triton._backend import interpreter_enabled
from nlsa_triton._oom import is_out_of_memory

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

CSV_COLUMNS = (
    "provider", "mode", "metric", "height", "width", "batch", "channels", "n_hashes",
    "chunk_size", "dtype", "status", "median", "p20", "p80", "device", "torch", "triton",
    "commit", "timestamp",
)
METRICS = ("time_ms", "peak_mem_mb")
# ok: measured; oom: ran out of memory; skipped: not run on purpose (no CUDA for Triton,
# backward not implemented, predicted too slow, time budget spent);
# error: raised something else (the progress line and sweep.log say what);
# not_measured: the run was fine but this metric cannot be measured here.
STATUSES = ("ok", "oom", "skipped", "error", "not_measured")
MB = 2 ** 20  # "MB" in the CSV, the plots and table.md is MiB, as torch reports memory
# Torch threads of a CPU measurement unless --threads says otherwise: with one per core,
# OpenMP threads wait on each other whenever anything else runs on the machine, and small
# ops slow down 10-100x; one thread gives repeatable times on a shared 2-core machine.
DEFAULT_CPU_THREADS = 1

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------- device facts

def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def device_name(device: str, threads: int | None = None) -> str:
    """What goes in the CSV's device column (threads: the CPU measurements' torch threads)."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu: {cpu_model()} / {os.cpu_count()} cores / {threads or torch.get_num_threads()} torch threads"


def device_slug(device: str) -> str:
    """'cpu', or the GPU name slugified ('nvidia-h100-80gb-hbm3')."""
    return slugify(torch.cuda.get_device_name()) if device == "cuda" else "cpu"


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception:  # noqa: BLE001 - triton missing or broken: the column says so
        return ""


def git_commit() -> str:
    """Short HEAD of the repository, '-dirty' when tracked files differ; '' outside git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- CSV

def format_value(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class CsvWriter:
    """Writes sweep.csv row by row (flushed), so an interrupted sweep keeps what it measured."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=CSV_COLUMNS)
        self._writer.writeheader()
        self._file.flush()

    def write(self, row: dict) -> None:
        missing = set(CSV_COLUMNS) - set(row)
        if missing:
            raise KeyError(f"row lacks columns {sorted(missing)}")
        self._writer.writerow({k: format_value(row[k]) for k in CSV_COLUMNS})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_csv(path: Path) -> list[dict]:
    """Rows of a sweep.csv with numbers parsed (empty values become None)."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = dict(raw)
            for key in ("height", "width", "batch", "channels", "n_hashes", "chunk_size"):
                row[key] = int(row[key]) if row[key] not in ("", None) else 0
            for key in ("median", "p20", "p80"):
                row[key] = float(row[key]) if row[key] not in ("", None) else None
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------- errors

class Skip(Exception):
    """This provider cannot run this configuration on this device (status 'skipped')."""


def triton_unavailable_reason(device: str) -> str | None:
    """Why the Triton kernels are not timed on this device, or None when they are."""
    if device != "cuda":
        return "Triton kernels need CUDA; the Triton interpreter is never timed"
    if interpreter_enabled():
        return "TRITON_INTERPRET=1 is set; the Triton interpreter is never timed"
    return None


def outcome(exc: BaseException) -> tuple[str, str]:
    """(status, reason) for an exception out of building or running a configuration:
    Skip and NotImplementedError (e.g. a backward not written yet) are 'skipped', running
    out of memory is 'oom', anything else 'error'."""
    if isinstance(exc, Skip):
        return "skipped", str(exc)
    if isinstance(exc, NotImplementedError):
        return "skipped", short_reason(exc)
    return ("oom" if is_out_of_memory(exc) else "error"), short_reason(exc)


def short_reason(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def free_cuda(collect: bool = True) -> None:
    """Drop what an OOM or a finished configuration left: garbage, then cached blocks."""
    if collect:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- GPU measurement

QUANTILES = [0.5, 0.2, 0.8]


def gpu_time_ms(fn, *, warmup_ms: int, rep_ms: int) -> tuple[float, float, float]:
    """(median, p20, p80) in ms from triton.testing.do_bench; its warm-up runs are not timed."""
    from triton.testing import do_bench

    median, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=QUANTILES)
    return float(median), float(p20), float(p80)


def gpu_peak_mb(fn) -> float:
    """Peak CUDA memory allocated during one call of fn, minus what was allocated before."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / MB


# ---------------------------------------------------------------------------- CPU measurement

def quantiles_ms(samples_s: list[float]) -> tuple[float, float, float]:
    import numpy as np

    ms = np.asarray(samples_s, dtype=float) * 1e3
    return float(np.median(ms)), float(np.percentile(ms, 20)), float(np.percentile(ms, 80))


def cpu_repeats(first_call_s: float, *, target_s: float, min_reps: int, max_reps: int) -> int:
    """How many timed repeats after the warm-up call: about target_s of them, within bounds."""
    if first_call_s <= 0:
        return max_reps
    return int(min(max_reps, max(min_reps, math.ceil(target_s / first_call_s))))


def cpu_time_ms(fn, repeats: int) -> tuple[float, float, float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return quantiles_ms(samples)


def proc_status_kb(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status in kB (VmRSS, VmHWM); {} where there is no /proc."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in keys:
                    out[key] = int(value.split()[0])
    except OSError:
        return {}
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_first_call(fn) -> tuple[float, dict]:
    """Run fn once (the untimed warm-up at its size) and read its peak resident growth.

    Returns (seconds of the call, {"mem": ..., "reason": ...}): mem is {"status": "ok",
    "median": MiB} from VmHWM after the call minus VmRSS before it, or "not_measured"
    where there is no /proc/self/status. Exceptions of fn propagate.
    """
    gc.collect()
    hwm_reset = reset_peak_rss()
    before = proc_status_kb("VmRSS", "VmHWM")
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    after = proc_status_kb("VmHWM")
    if "VmHWM" not in after or "VmRSS" not in before:
        return seconds, {"mem": {"status": "not_measured"}, "reason": "no /proc/self/status: memory not measured"}
    # Without the reset, VmHWM before the call may exceed VmRSS: count growth of the peak.
    base = before["VmRSS"] if hwm_reset else max(before["VmRSS"], before.get("VmHWM", 0))
    peak_mb = max(0, after["VmHWM"] - base) * 1024 / MB
    return seconds, {"mem": {"status": "ok", "median": peak_mb}, "reason": ""}


def parse_size(text: str) -> tuple[int, int]:
    """A map size on the command line: "150" (square) or "150x200" (height x width)."""
    h, _, w = text.strip().lower().partition("x")
    return int(h), int(w or h)


def parse_dtype(text: str) -> str:
    if text.lower() not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r} (fp32, fp16, bf16)")
    return dtype_name(DTYPES[text.lower()])


def resolve_device(requested: str) -> str:
    """--device auto|cpu|cuda as the device to measure on."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return requested


def same_status(status: str, reason: str = "") -> dict:
    """A measurement result whose time and memory share one non-ok status."""
    return {"time": {"status": status}, "mem": {"status": status}, "reason": reason}


def results_dir(out: str | None, device: str) -> Path:
    """--out, or bench/results/<device-slug>/ by default; created if missing."""
    path = Path(out) if out else BENCH_DIR / "results" / device_slug(device)
    path.mkdir(parents=True, exist_ok=True)
    return path
