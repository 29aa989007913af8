"""Benchmark sweep: NLSA (Triton kernels, the torch backend, the step-by-step reference)
against full non-local attention (materialised softmax and SDPA) and criss-cross attention.

    python bench/sweep.py                 # the default set for this device
    python bench/sweep.py --quick         # a tiny smoke run
    python bench/sweep.py --sizes 100,150 --providers nla_torch,nlsa_torch,nlsa_reference --n-hashes 4 \\
        --channels 64 --dtype fp32 --modes fwd --out /tmp/bench

Writes into --out (default bench/results/<device-slug>/): sweep.csv (one row per
measurement), sweep.log (the progress lines, with the reason of every status other than
ok), table.md (the paper's Table 2 layout beside the paper's numbers) and the plots of
bench/plots.py. What is measured, and how, is in bench/README.md and providers.py.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import (  # noqa: E402
    results_dir,
    BENCH_DIR, DEFAULT_CPU_THREADS, CsvWriter, device_name, free_cuda, git_commit,
    gpu_peak_mb, gpu_time_ms, now_iso, outcome, parse_dtype, parse_size, resolve_device, same_status,
    triton_version,
)
from providers import (  # noqa: E402
    HASHED, MODES, PROVIDERS, TIME_EXPONENT, Config, build, check_channels, unavailable_reason,
)

GPU_SIDES = (50, 100, 150, 256, 512, 1024, 2048)
CPU_SIDES = (50, 100, 150)
CPU_THINNING = "50x50 all of it, 100x100 all but fwd_bwd at channels 256, 150x150 only fwd at channels 64"
QUICK_SIDES = (24, 32)


def cpu_default_keeps(height: int, width: int, mode: str, channels: int) -> bool:
    """The CPU default grid (channels 64 and 256, both modes) thins as maps grow (fwd at
    channels 64 is Table 2's setting), so that `python bench/sweep.py` on a 2-core machine
    ends well under 5 minutes. CPU_THINNING says the same in words."""
    side = max(height, width)
    if side <= 50:
        return True
    if side <= 100:
        return not (mode == "fwd_bwd" and channels == 256)
    return mode == "fwd" and channels == 64


@dataclass
class Settings:
    device: str
    sizes: list  # [(height, width)]
    providers: list
    n_hashes: list
    channels: list
    dtypes: list  # dtype names: "float32", ...
    modes: list
    chunk_size: int
    max_call_ms: float
    time_budget_s: float
    cpu_grid_restricted: bool
    # CPU timing: repeats of about target_s, within [min_reps, max_reps]; GPU: do_bench times.
    cpu_target_s: float
    cpu_min_reps: int
    cpu_max_reps: int
    gpu_warmup_ms: int
    gpu_rep_ms: int
    threads: int | None = None  # CPU: torch threads per measurement; None on GPU
    seed: int = 0


# ---------------------------------------------------------------------------- arguments

def _list(text: str, item=str) -> list:
    return [item(t.strip()) for t in text.split(",") if t.strip()]


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python bench/sweep.py",
        description="Benchmark sweep of nlsa-triton's providers (see bench/README.md).",
    )
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: sizes 24,32, channels 64, n_hashes 1,2, fp32 (and fp16 on GPU), "
                        "few repeats")
    p.add_argument("--sizes", type=lambda s: _list(s, parse_size),
                   help="comma-separated sides (square maps, e.g. 50,100,150) or HxW; default: CPU "
                        f"{','.join(map(str, CPU_SIDES))}, GPU {','.join(map(str, GPU_SIDES))}. On CPU, "
                        f"unless --sizes, --channels or --modes is given, the grid is thinned: {CPU_THINNING}")
    p.add_argument("--providers", type=_list,
                   help=f"comma-separated, default all: {','.join(PROVIDERS)}")
    p.add_argument("--n-hashes", type=lambda s: _list(s, int), help="for the NLSA providers; default 1,2,4,8")
    p.add_argument("--channels", type=lambda s: _list(s, int), help="default 64,256")
    p.add_argument("--dtype", type=lambda s: _list(s, parse_dtype),
                   help="comma-separated fp32, fp16, bf16; default fp32 on CPU, fp32,fp16,bf16 on GPU")
    p.add_argument("--modes", type=_list, help="fwd, fwd_bwd; default both")
    p.add_argument("--out", help="output folder; default bench/results/<device-slug>/")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="default: cuda when available, else cpu")
    p.add_argument("--chunk-size", type=int, default=144, help="NLSA chunk size (default 144)")
    p.add_argument("--max-call-ms", type=float,
                   help="skip a configuration whose time per call, predicted from the same series at "
                        "the largest smaller size that ran, exceeds this (default: CPU 20000, GPU 1000)")
    p.add_argument("--time-budget", type=float,
                   help="seconds; once spent, the remaining configurations are recorded as skipped "
                        "(default: CPU 240, GPU 540; 0: no budget)")
    p.add_argument("--threads", type=int,
                   help=f"CPU: torch threads per measurement (default {DEFAULT_CPU_THREADS}, so that times "
                        "repeat on a shared machine; unused on GPU)")
    p.add_argument("--no-plots", action="store_true", help="write sweep.csv and table.md only")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    for name, allowed in (("providers", PROVIDERS), ("modes", MODES)):
        bad = [v for v in getattr(args, name) or [] if v not in allowed]
        if bad:
            p.error(f"unknown {name} {bad}; choose from {', '.join(allowed)}")
    return args


def make_settings(args) -> Settings:
    device = resolve_device(args.device)
    gpu = device == "cuda"
    if args.quick:
        sides = QUICK_SIDES
        n_hashes, channels = [1, 2], [64]
        dtypes = ["float32", "float16"] if gpu else ["float32"]
        timing = dict(cpu_target_s=0.05, cpu_min_reps=3, cpu_max_reps=5, gpu_warmup_ms=5, gpu_rep_ms=20)
    else:
        sides = GPU_SIDES if gpu else CPU_SIDES
        n_hashes, channels = [1, 2, 4, 8], [64, 256]
        dtypes = ["float32", "float16", "bfloat16"] if gpu else ["float32"]
        timing = dict(cpu_target_s=0.5, cpu_min_reps=3, cpu_max_reps=20, gpu_warmup_ms=10, gpu_rep_ms=50)
    return Settings(
        device=device,
        sizes=args.sizes or [(s, s) for s in sides],
        providers=args.providers or list(PROVIDERS),
        n_hashes=args.n_hashes or n_hashes,
        channels=args.channels or channels,
        dtypes=args.dtype or dtypes,
        modes=args.modes or list(MODES),
        chunk_size=args.chunk_size,
        max_call_ms=args.max_call_ms if args.max_call_ms is not None else (1000.0 if gpu else 20000.0),
        time_budget_s=args.time_budget if args.time_budget is not None else (540.0 if gpu else 240.0),
        # The thinning is a property of the default grid: any grid the user chooses runs whole.
        cpu_grid_restricted=not (gpu or args.quick or args.sizes or args.channels or args.modes),
        threads=None if gpu else (args.threads or DEFAULT_CPU_THREADS),
        **timing,
    )


def plan(s: Settings) -> list[Config]:
    """Every configuration, in run order: provider, dtype, channels, mode, n_hashes, then
    size (increasing), so a series' smaller sizes run first and predict the larger ones."""
    configs = []
    for provider in s.providers:
        hashed = provider in HASHED
        for dtype in s.dtypes:
            for ch in s.channels:
                for mode in s.modes:
                    for r in (s.n_hashes if hashed else [0]):
                        for h, w in sorted(s.sizes, key=lambda hw: hw[0] * hw[1]):
                            if s.cpu_grid_restricted and not cpu_default_keeps(h, w, mode, ch):
                                continue
                            configs.append(Config(provider, mode, h, w, ch, r,
                                                  s.chunk_size if hashed else 0, dtype))
    return configs


# ---------------------------------------------------------------------------- runners

class CpuRunner:
    """Each configuration in a fresh process forked by bench/cpu_worker.py (see there)."""

    def __init__(self, s: Settings):
        self.s = s
        self.proc = None

    def _start(self):
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "cpu_worker.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        line = self.proc.stdout.readline()
        if not line or not json.loads(line).get("ready"):
            self.proc.kill()
            raise RuntimeError("bench/cpu_worker.py did not start (see its error above)")

    def run(self, cfg: Config) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        timeout = max(120.0, 2 * (self.s.cpu_max_reps + 2) * self.s.max_call_ms / 1e3)
        request = dict(config=asdict(cfg), seed=self.s.seed, target_s=self.s.cpu_target_s,
                       min_reps=self.s.cpu_min_reps, max_reps=self.s.cpu_max_reps, timeout_s=timeout,
                       threads=self.s.threads)
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:
            line = ""
        if not line:
            self.proc = None
            return same_status("error", "the CPU worker died; restarted for the next configuration")
        return json.loads(line)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


STICKY_CUDA_ERRORS = ("illegal memory access", "device-side assert", "unspecified launch failure",
                      "misaligned address")


class GpuRunner:
    """In this process: warm-up call (compiles; catches OOM and missing backward), one call
    for the memory peak, then triton.testing.do_bench. Memory is freed after each."""

    def __init__(self, s: Settings):
        self.s = s
        self.broken = ""

    def _fail(self, exc) -> tuple[str, str]:
        status, reason = outcome(exc)
        if status == "error" and any(e in reason.lower() for e in STICKY_CUDA_ERRORS):
            self.broken = reason
        return status, reason

    def run(self, cfg: Config) -> dict:
        if self.broken:
            return same_status("error", f"CUDA context broken by an earlier error ({self.broken})")
        err, case = None, None
        try:
            case = build(cfg, "cuda", self.s.seed)
            case.fn()
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            err = self._fail(exc)
        if err:  # the exception and its frames are gone here, so is what they held
            case = None
            free_cuda()
            return same_status(*err)

        result = {"reason": ""}
        try:
            case.clear_grads()
            result["mem"] = {"status": "ok", "median": gpu_peak_mb(case.fn)}
        except Exception as exc:  # noqa: BLE001
            err = self._fail(exc)
        if err:
            result["mem"], result["reason"], err = {"status": err[0]}, err[1], None
            free_cuda()
        try:
            median, p20, p80 = gpu_time_ms(case.fn, warmup_ms=self.s.gpu_warmup_ms, rep_ms=self.s.gpu_rep_ms)
            result["time"] = {"status": "ok", "median": median, "p20": p20, "p80": p80}
        except Exception as exc:  # noqa: BLE001
            err = self._fail(exc)
        if err:
            result["time"], result["reason"] = {"status": err[0]}, err[1]
        failed = err is not None or result["mem"]["status"] != "ok"
        case = None
        free_cuda(collect=failed)  # without a failure, refcounting has freed everything
        return result

    def close(self):
        pass


# ---------------------------------------------------------------------------- the sweep

def _fmt(m: dict, unit: str) -> str:
    if m.get("status") != "ok":
        return m.get("status", "?")
    if unit == "ms":
        spread = f" [{m['p20']:.3g}, {m['p80']:.3g}]" if m.get("p20") is not None else ""
        return f"{m['median']:.4g} ms{spread}"
    return f"{m['median']:.4g} MB"


def _predicted_ms(cfg: Config, last_ok: dict) -> float | None:
    prev = last_ok.get(cfg.series())
    if prev is None or cfg.pixels <= prev[0]:
        return None
    pixels, ms = prev
    return ms * (cfg.pixels / pixels) ** TIME_EXPONENT[cfg.provider]


def _rows(cfg: Config, result: dict, meta: dict) -> list[dict]:
    stamp = now_iso()
    rows = []
    for metric, key in (("time_ms", "time"), ("peak_mem_mb", "mem")):
        m = result.get(key, {"status": "error"})
        rows.append(dict(
            provider=cfg.provider, mode=cfg.mode, metric=metric, height=cfg.height, width=cfg.width,
            batch=cfg.batch, channels=cfg.channels, n_hashes=cfg.n_hashes, chunk_size=cfg.chunk_size,
            dtype=cfg.dtype, status=m.get("status", "error"), median=m.get("median"), p20=m.get("p20"),
            p80=m.get("p80"), timestamp=stamp, **meta,
        ))
    return rows


def run_sweep(s: Settings, out_dir: Path, say) -> Counter:
    meta = dict(device=device_name(s.device, s.threads), torch=torch.__version__, triton=triton_version(),
                commit=git_commit())
    configs = plan(s)
    say(f"# device: {meta['device']}; torch {meta['torch']}, triton {meta['triton'] or '-'}, "
        f"commit {meta['commit'] or '-'}")
    say(f"# {len(configs)} configurations: providers {','.join(s.providers)}; sizes "
        f"{','.join(f'{h}x{w}' for h, w in s.sizes)}; channels {s.channels}; n_hashes {s.n_hashes}; "
        f"dtypes {s.dtypes}; modes {s.modes}; chunk {s.chunk_size}; max call {s.max_call_ms:g} ms; "
        f"time budget {s.time_budget_s:g} s"
        + (f"; CPU default grid thinned with size: {CPU_THINNING}" if s.cpu_grid_restricted else ""))
    if s.device == "cuda":
        say(f"# GPU: do_bench(warmup={s.gpu_warmup_ms} ms, rep={s.gpu_rep_ms} ms), memory = peak allocated "
            f"- allocated before; TF32 matmuls {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    else:
        say(f"# CPU: {s.threads} torch threads; time: median of {s.cpu_min_reps}-{s.cpu_max_reps} "
            f"perf_counter repeats after a warm-up call; memory: peak RSS growth of a fresh process")
    writer = CsvWriter(out_dir / "sweep.csv")
    runner = GpuRunner(s) if s.device == "cuda" else CpuRunner(s)
    counts, last_ok = Counter(), {}
    start = time.monotonic()
    try:
        for i, cfg in enumerate(configs, 1):
            reason = unavailable_reason(cfg.provider, s.device) or check_channels(cfg.provider, cfg.channels)
            predicted = _predicted_ms(cfg, last_ok)
            if reason:
                result = same_status("skipped", reason)
            elif s.time_budget_s and time.monotonic() - start > s.time_budget_s:
                result = same_status("skipped", f"time budget of {s.time_budget_s:g} s spent (--time-budget)")
            elif predicted is not None and predicted > s.max_call_ms:
                result = same_status("skipped", f"predicted {predicted:.4g} ms per call > --max-call-ms "
                                          f"{s.max_call_ms:g}")
            else:
                result = runner.run(cfg)
            t = result.get("time", {})
            if t.get("status") == "ok":
                last_ok[cfg.series()] = (cfg.pixels, t["median"])
            for row in _rows(cfg, result, meta):
                writer.write(row)
                counts[row["status"]] += 1
            note = f"  ({result['reason']})" if result.get("reason") else ""
            say(f"[{i:>{len(str(len(configs)))}}/{len(configs)} {time.monotonic() - start:7.1f}s] "
                f"{cfg.label()}: time {_fmt(t, 'ms')} | mem {_fmt(result.get('mem', {}), 'MB')}{note}")
    finally:
        runner.close()
        writer.close()
    return counts


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    s = make_settings(args)
    out_dir = results_dir(args.out, s.device)
    start = time.monotonic()
    with open(out_dir / "sweep.log", "w") as log:
        def say(line: str) -> None:
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

        counts = run_sweep(s, out_dir, say)
        from table import write_table

        written = [out_dir / "sweep.csv", write_table(out_dir / "sweep.csv", out_dir / "table.md")]
        if not args.no_plots:
            from plots import draw

            try:
                pngs, notes = draw(out_dir)
            except ImportError as exc:  # matplotlib is in the `bench` extra
                say(f"# plots not drawn: {exc} (pip install '.[bench]')")
            else:
                written += pngs
                for n in notes:
                    say(f"# note: {n}")
        say(f"# rows by status: {dict(sorted(counts.items()))}; {time.monotonic() - start:.1f} s")
        say(f"# wrote {len(written)} files into {out_dir}: " + ", ".join(p.name for p in written) + ", sweep.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
