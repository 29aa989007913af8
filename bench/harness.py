"""The one measurement harness of bench/: `measure(fn, device) -> Measurement`, the runner
that gives each configuration its setup and its process, the loop over a grid, and the
command-line arguments the benchmarks share. bench/README.md ("What is measured") says
the same in prose.

GPU, in this process: one warm-up call (compiles, catches OOM or a missing backward), one
call for memory (peak allocated minus allocated before: inputs excluded), then
triton.testing.do_bench (median, p20, p80). Memory is freed after each configuration.

CPU, each configuration in a fresh process forked from a forkserver that has imported
torch and nlsa_triton and computed nothing, so that no allocator cache, thread pool or
resident page of an earlier configuration is in the reading, the OOM killer takes the
child and not the run (SIGKILL: 'oom'), and a hung call is killed at its time limit. In
the child: a warm-up of the provider on an 8x8 map (thread pools and library start-up are
not charged), the setup (inputs, weights: excluded), then the first call at the size,
untimed, whose VmHWM - VmRSS (VmHWM reset through /proc/self/clear_refs) is the peak
resident growth, then time.perf_counter repeats.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import multiprocessing
import time
from typing import Callable

import numpy as np
import torch

from nlsa_triton._oom import is_out_of_memory
from schema import MB, Config, CsvWriter, Measurement, Metric

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "half": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}
DEFAULT_CPU_THREADS = 1  # repeatable times on a shared machine (bench/README.md)
WARMUP_SIDE = 8
STICKY_CUDA_ERRORS = ("illegal memory access", "device-side assert", "unspecified launch failure",
                      "misaligned address")


@dataclasses.dataclass(frozen=True)
class Timing:
    """CPU: about target_s of repeats, within [min_reps, max_reps]; GPU: do_bench's windows."""

    cpu_target_s: float = 0.5
    cpu_min_reps: int = 3
    cpu_max_reps: int = 20
    gpu_warmup_ms: int = 10
    gpu_rep_ms: int = 50


class Skip(Exception):
    """This provider cannot run this configuration on this device (status 'skipped')."""


def short_reason(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def outcome(exc: BaseException) -> tuple[str, str]:
    """(status, reason): Skip and NotImplementedError 'skipped', out of memory 'oom', else 'error'."""
    if isinstance(exc, Skip):
        return "skipped", str(exc)
    if isinstance(exc, NotImplementedError):
        return "skipped", short_reason(exc)
    return ("oom" if is_out_of_memory(exc) else "error"), short_reason(exc)


def triton_unavailable_reason(device: str) -> str | None:
    if device != "cuda":
        return "Triton kernels need CUDA; the Triton interpreter is never timed"
    from nlsa_triton._backend import interpreter_enabled

    if interpreter_enabled():
        return "TRITON_INTERPRET=1 is set; the Triton interpreter is never timed"
    return None


# ---------------------------------------------------------------------------- GPU

def tf32_matmuls() -> bool:
    """Whether torch lets fp32 CUDA matmuls use TF32: ``fp32_precision`` where torch has it
    (reading the legacy ``allow_tf32`` raises once that was set), else the legacy flag."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    return precision == "tf32" if precision is not None else bool(matmul.allow_tf32)


def free_cuda(collect: bool = True) -> None:
    if collect:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def cuda_peak_mb(fn) -> float:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / MB


def cuda_time_ms(fn, timing: Timing) -> tuple[float, float, float]:
    from triton.testing import do_bench

    return tuple(float(v) for v in do_bench(fn, warmup=timing.gpu_warmup_ms, rep=timing.gpu_rep_ms,
                                            quantiles=[0.5, 0.2, 0.8]))


def _measure_cuda(fn, timing: Timing) -> Measurement:
    failure = None
    try:
        fn()
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        failure = outcome(exc)
    if failure:  # outside the handler: the exception's frames, and what they held, are gone
        free_cuda()
        return Measurement.failed(*failure)
    m = Measurement()
    for name, read in (("peak_mem_mb", lambda: (cuda_peak_mb(fn),)), ("time_ms", lambda: cuda_time_ms(fn, timing))):
        try:
            m.metrics[name] = Metric("ok", *read())
        except Exception as exc:  # noqa: BLE001
            status, m.reason = outcome(exc)
            m.metrics[name] = Metric(status)
        if m.metrics[name].status != "ok":
            free_cuda()
    m.metrics = {"time_ms": m.metrics["time_ms"], "peak_mem_mb": m.metrics["peak_mem_mb"]}
    return m


# ---------------------------------------------------------------------------- CPU

def proc_status_kb(*keys: str) -> dict[str, int]:
    try:
        with open("/proc/self/status") as f:
            return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f) if k in keys}
    except OSError:
        return {}


def reset_peak_rss() -> bool:
    """VmHWM := VmRSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _measure_cpu(fn, timing: Timing) -> Measurement:
    gc.collect()
    hwm_reset = reset_peak_rss()
    before = proc_status_kb("VmRSS", "VmHWM")
    try:
        start = time.perf_counter()
        fn()
        first_s = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001
        return Measurement.failed(*outcome(exc))
    after = proc_status_kb("VmHWM")
    m = Measurement()
    if "VmHWM" in after and "VmRSS" in before:
        # Without the reset, VmHWM before the call may exceed VmRSS: count the peak's growth.
        base = before["VmRSS"] if hwm_reset else max(before["VmRSS"], before.get("VmHWM", 0))
        mem = Metric("ok", max(0, after["VmHWM"] - base) * 1024 / MB)
    else:
        mem, m.reason = Metric("not_measured"), "no /proc/self/status: memory not measured"
    reps = timing.cpu_max_reps if first_s <= 0 else int(
        min(timing.cpu_max_reps, max(timing.cpu_min_reps, math.ceil(timing.cpu_target_s / first_s))))
    try:
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        ms = np.asarray(samples) * 1e3
        m.metrics["time_ms"] = Metric("ok", float(np.median(ms)), float(np.percentile(ms, 20)),
                                      float(np.percentile(ms, 80)))
    except Exception as exc:  # noqa: BLE001
        status, m.reason = outcome(exc)
        m.metrics["time_ms"] = Metric(status)
    m.metrics["peak_mem_mb"] = mem
    return m


def measure(fn: Callable[[], None], device: str, timing: Timing = Timing()) -> Measurement:
    """Time and peak memory of fn() on device; failures become statuses, never exceptions."""
    return (_measure_cuda if device == "cuda" else _measure_cpu)(fn, timing)


# ---------------------------------------------------------------------------- the runner

Setup = Callable[[Config], Callable[[], None]]  # a configuration's inputs -> the call to measure


def _child(conn, setup: Setup, cfg: Config, timing: Timing, threads: int | None) -> None:
    """In the fresh CPU process: the 8x8 warm-up, the setup, measure; the result to the pipe."""
    if threads:
        torch.set_num_threads(threads)
    try:
        try:
            setup(dataclasses.replace(cfg, height=WARMUP_SIDE, width=WARMUP_SIDE))()
        except Exception:  # noqa: BLE001 - the real call reports any problem
            pass
        m = measure(setup(cfg), "cpu", timing)
    except Exception as exc:  # noqa: BLE001
        m = Measurement.failed(*outcome(exc))
    conn.send(m)


class Runner:
    """runner.run(setup, cfg): setup(cfg) builds the inputs and returns the call, which is
    measured on the GPU in this process, on the CPU in a fresh process (module docstring)."""

    def __init__(self, device: str, *, timing: Timing = Timing(), threads: int | None = None,
                 timeout_s: float = 600.0):
        self.device, self.timing, self.threads, self.timeout_s = device, timing, threads, timeout_s
        self.broken = ""  # a CUDA error that leaves the context unusable
        self._ctx = None

    def run(self, setup: Setup, cfg: Config) -> Measurement:
        return self._cuda(setup, cfg) if self.device == "cuda" else self._forked(setup, cfg)

    def _cuda(self, setup: Setup, cfg: Config) -> Measurement:
        if self.broken:
            return Measurement.failed("error", f"CUDA context broken by an earlier error ({self.broken})")
        failure, fn = None, None
        try:
            fn = setup(cfg)
        except Exception as exc:  # noqa: BLE001
            failure = outcome(exc)
        m = Measurement.failed(*failure) if failure else measure(fn, "cuda", self.timing)
        fn = None
        failed = any(v.status != "ok" for v in m.metrics.values())
        free_cuda(collect=failed)  # without a failure, refcounting has freed everything
        if failed and any(e in m.reason.lower() for e in STICKY_CUDA_ERRORS):
            self.broken = m.reason
        return m

    def _forked(self, setup: Setup, cfg: Config) -> Measurement:
        if self._ctx is None:
            self._ctx = multiprocessing.get_context("forkserver")
            self._ctx.set_forkserver_preload(["torch", "nlsa_triton", "harness"])
        receive, send = self._ctx.Pipe(duplex=False)
        child = self._ctx.Process(target=_child, args=(send, setup, cfg, self.timing, self.threads), daemon=True)
        child.start()
        send.close()
        result, timed_out = None, False
        try:
            if receive.poll(self.timeout_s):
                result = receive.recv()
            else:
                timed_out = True
                child.kill()
        except EOFError:  # died without a result
            pass
        child.join()
        receive.close()
        if result is not None:
            return result
        if timed_out:
            return Measurement.failed("error", f"timed out after {self.timeout_s:g} s")
        if child.exitcode == -9:
            return Measurement.failed("oom", "child killed by SIGKILL (the kernel's OOM killer, most likely)")
        return Measurement.failed("error", f"child exited with code {child.exitcode} and no result")


def run_grid(configs: list[Config], setup: Setup, runner: Runner, writer: CsvWriter, say,
             skip: Callable[[Config, list, float], str | None] = lambda cfg, done, elapsed: None,
             extra: Callable[[Config], dict] = lambda cfg: {}) -> list[tuple[Config, Measurement]]:
    """Measure each configuration unless skip(cfg, done so far, seconds spent) gives a
    reason; extra(cfg): metrics to add (nlsn's gflops). One CSV row per metric, one
    progress line per configuration."""
    done, start, width = [], time.monotonic(), len(str(len(configs)))
    for i, cfg in enumerate(configs, 1):
        reason = skip(cfg, done, time.monotonic() - start)
        m = Measurement.failed("skipped", reason) if reason else runner.run(setup, cfg)
        m.metrics.update(extra(cfg))
        done.append((cfg, m))
        writer.write(cfg, m)
        say(f"[{i:>{width}}/{len(configs)} {time.monotonic() - start:7.1f}s] {cfg.label()}: {m}")
    return done


# ---------------------------------------------------------------------------- arguments

def parse_size(text: str) -> tuple[int, int]:
    """"150" (square) or "150x200" (height x width)."""
    h, _, w = text.strip().lower().partition("x")
    return int(h), int(w or h)


def parse_dtype(text: str) -> str:
    if text.lower() not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r} (fp32, fp16, bf16)")
    return DTYPES[text.lower()]


def comma_list(item=str):
    return lambda text: [item(t.strip()) for t in text.split(",") if t.strip()]


def parser(prog: str, description: str, providers, sizes_default: str) -> argparse.ArgumentParser:
    """The arguments both benchmarks take."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--sizes", type=comma_list(parse_size),
                   help=f"comma-separated sides (square maps) or HxW; {sizes_default}")
    p.add_argument("--providers", type=comma_list(), help=f"comma-separated, default all: {','.join(providers)}")
    p.add_argument("--chunk-size", type=int, default=144, help="NLSA chunk size (default 144)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="default: cuda when available, else cpu")
    p.add_argument("--threads", type=int, help=f"CPU: torch threads per measurement (default "
                   f"{DEFAULT_CPU_THREADS}, so that times repeat on a shared machine; unused on GPU)")
    p.add_argument("--seed", type=int, default=0, help="inputs, weights and rotations (default 0)")
    p.add_argument("--out", help="output folder; default a new bench/results/<device-slug>-<UTC time>/")
    p.add_argument("--replace-committed", action="store_true",
                   help="write into bench/results/<device-slug>/, replacing the committed results there")
    return p


def parse(p: argparse.ArgumentParser, argv, choices: dict) -> argparse.Namespace:
    """Parse, check list arguments against choices, resolve device and threads."""
    args = p.parse_args(argv)
    if args.out and args.replace_committed:
        p.error("--out and --replace-committed name two different folders; give one")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    for name, allowed in choices.items():
        bad = [v for v in getattr(args, name) or [] if v not in allowed]
        if bad:
            p.error(f"unknown {name} {bad}; choose from {', '.join(allowed)}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        p.exit(1, "--device cuda: no CUDA device is available\n")
    args.threads = None if args.device == "cuda" else (args.threads or DEFAULT_CPU_THREADS)
    return args
