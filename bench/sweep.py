"""Benchmark sweep: NLSA (Triton kernels, the torch backend, the step-by-step reference,
FlexAttention) against full non-local attention and criss-cross attention.

    python bench/sweep.py                 # the default set for this device
    python bench/sweep.py --quick         # a tiny smoke run
    python bench/sweep.py --sizes 100,150 --providers nla_torch,nlsa_torch --n-hashes 4 --modes fwd --out /tmp/b

Writes sweep.csv, sweep.log, table.md and the plots into --out; by default a new folder,
bench/results/<device-slug>-<UTC time>/ (git-ignored); --replace-committed writes into
bench/results/<device-slug>/, the committed results. Flags, defaults and what is measured: bench/README.md; the providers:
providers.py; the measurement: harness.py.
"""
from __future__ import annotations

import functools
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


import harness  # noqa: E402
from providers import HASHED, MODES, PROVIDERS, TIME_EXPONENT, build, unavailable_reason  # noqa: E402
from schema import Config, CsvWriter, describe, meta, results_dir  # noqa: E402

GPU_SIDES = (50, 100, 150, 256, 512, 1024, 2048)
CPU_SIDES = (50, 100, 150)
QUICK_SIDES = (24, 32)
CPU_THINNING = "50x50 all of it, 100x100 all but fwd_bwd at channels 256, 150x150 only fwd at channels 64"
TIMING = {"quick": harness.Timing(0.05, 3, 5, 5, 20), "default": harness.Timing(0.5, 3, 20, 10, 50)}


def cpu_default_keeps(height: int, width: int, mode: str, channels: int) -> bool:
    """The CPU default grid thins as maps grow (CPU_THINNING; fwd at channels 64 is Table 2's
    setting), so that `python bench/sweep.py` on a 2-core machine ends well under 5 minutes."""
    side = max(height, width)
    if side <= 50:
        return True
    if side <= 100:
        return not (mode == "fwd_bwd" and channels == 256)
    return mode == "fwd" and channels == 64


def parse_args(argv):
    """The command line, with every default of this device filled in."""
    p = harness.parser("python bench/sweep.py", "Benchmark sweep of nlsa-triton's providers (bench/README.md).",
                       PROVIDERS, f"default: CPU {','.join(map(str, CPU_SIDES))}, GPU {','.join(map(str, GPU_SIDES))}. "
                       f"On CPU, unless --sizes, --channels or --modes is given, the grid is thinned: {CPU_THINNING}")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: sizes 24,32, channels 64, n_hashes 1,2, fp32 (and fp16 on GPU), few repeats")
    p.add_argument("--n-hashes", type=harness.comma_list(int), help="for the NLSA providers; default 1,2,4,8")
    p.add_argument("--channels", type=harness.comma_list(int), help="default 64,256")
    p.add_argument("--dtype", type=harness.comma_list(harness.parse_dtype),
                   help="comma-separated fp32, fp16, bf16; default fp32 on CPU, fp32,fp16,bf16 on GPU")
    p.add_argument("--modes", type=harness.comma_list(), help="fwd, fwd_bwd; default both")
    p.add_argument("--max-call-ms", type=float,
                   help="skip a configuration whose time per call, predicted from the same series at the "
                        "largest smaller size that ran, exceeds this (default: CPU 20000, GPU 1000)")
    p.add_argument("--time-budget", type=float, help="seconds; once spent, the remaining configurations are "
                   "recorded as skipped (default: CPU 240, GPU 540; 0: no budget)")
    p.add_argument("--no-plots", action="store_true", help="write sweep.csv and table.md only")
    args = harness.parse(p, argv, {"providers": PROVIDERS, "modes": MODES})
    gpu = args.device == "cuda"
    # The thinning is a property of the default grid: any grid the user chooses runs whole.
    args.thinned = not (gpu or args.quick or args.sizes or args.channels or args.modes)
    args.sizes = args.sizes or [(s, s) for s in (QUICK_SIDES if args.quick else GPU_SIDES if gpu else CPU_SIDES)]
    args.providers = args.providers or list(PROVIDERS)
    args.n_hashes = args.n_hashes or ([1, 2] if args.quick else [1, 2, 4, 8])
    args.channels = args.channels or ([64] if args.quick else [64, 256])
    args.dtype = args.dtype or (["float32"] if not gpu else ["float32", "float16"] if args.quick
                                else ["float32", "float16", "bfloat16"])
    args.modes = args.modes or list(MODES)
    args.max_call_ms = args.max_call_ms if args.max_call_ms is not None else (1000.0 if gpu else 20000.0)
    args.time_budget = args.time_budget if args.time_budget is not None else (540.0 if gpu else 240.0)
    args.timing = TIMING["quick" if args.quick else "default"]
    return args


def plan(args) -> list[Config]:
    """Run order: provider, dtype, channels, mode, n_hashes, then size (increasing), so a
    series' smaller sizes run first and predict the larger ones."""
    return [
        Config(provider, mode, h, w, ch, r, args.chunk_size if provider in HASHED else 0, dtype)
        for provider in args.providers for dtype in args.dtype for ch in args.channels for mode in args.modes
        for r in (args.n_hashes if provider in HASHED else [0])
        for h, w in sorted(args.sizes, key=lambda hw: hw[0] * hw[1])
        if not args.thinned or cpu_default_keeps(h, w, mode, ch)
    ]


def predicted_ms(cfg: Config, done: list) -> float | None:
    """From the last ok time of the same series at fewer pixels: time ∝ L^TIME_EXPONENT."""
    prev = next(((c, m) for c, m in reversed(done) if c.series() == cfg.series()
                 and m.metrics["time_ms"].status == "ok"), None)
    if prev is None or cfg.pixels <= prev[0].pixels:
        return None
    return prev[1].metrics["time_ms"].median * (cfg.pixels / prev[0].pixels) ** TIME_EXPONENT[cfg.provider]


def run_sweep(args, out_dir: Path, say, columns: dict) -> Counter:
    """Measure every configuration into out_dir/sweep.csv; ``columns``: the meta columns,
    taken before anything was written (a tracked file rewritten would make the tree dirty)."""
    configs = plan(args)
    say(describe(columns))
    say(f"# {len(configs)} configurations: providers {','.join(args.providers)}; sizes "
        f"{','.join(f'{h}x{w}' for h, w in args.sizes)}; channels {args.channels}; n_hashes {args.n_hashes}; "
        f"dtypes {args.dtype}; modes {args.modes}; chunk {args.chunk_size}; max call {args.max_call_ms:g} ms; "
        f"time budget {args.time_budget:g} s"
        + (f"; CPU default grid thinned with size: {CPU_THINNING}" if args.thinned else ""))
    t = args.timing
    if args.device == "cuda":
        say(f"# GPU: do_bench(warmup={t.gpu_warmup_ms} ms, rep={t.gpu_rep_ms} ms), memory = peak allocated "
            f"- allocated before; TF32 matmuls {'on' if harness.tf32_matmuls() else 'off'}")
    else:
        say(f"# CPU: {args.threads} torch threads; time: median of {t.cpu_min_reps}-{t.cpu_max_reps} "
            f"perf_counter repeats after a warm-up call; memory: peak RSS growth of a fresh process")

    def skip(cfg: Config, done: list, elapsed: float) -> str | None:
        if reason := unavailable_reason(cfg, args.device):
            return reason
        if args.time_budget and elapsed > args.time_budget:
            return f"time budget of {args.time_budget:g} s spent (--time-budget)"
        if (ms := predicted_ms(cfg, done)) is not None and ms > args.max_call_ms:
            return f"predicted {ms:.4g} ms per call > --max-call-ms {args.max_call_ms:g}"
        return None

    runner = harness.Runner(args.device, timing=t, threads=args.threads,
                            timeout_s=max(120.0, 2 * (t.cpu_max_reps + 2) * args.max_call_ms / 1e3))
    writer = CsvWriter(out_dir / "sweep.csv", columns)
    try:
        done = harness.run_grid(configs, functools.partial(build, device=args.device, seed=args.seed),
                                runner, writer, say, skip)
    finally:
        writer.close()
    return Counter(m.status for _, result in done for m in result.metrics.values())


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    columns = meta(args.device, args.threads)  # git status first, before sweep.log is truncated
    out_dir = results_dir(args.out, args.device, args.replace_committed)
    start = time.monotonic()
    with open(out_dir / "sweep.log", "w") as log:
        def say(line: str) -> None:
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

        counts = run_sweep(args, out_dir, say, columns)
        from table import write_table2

        written = [out_dir / "sweep.log", out_dir / "sweep.csv", write_table2(out_dir)]
        if not args.no_plots:
            try:
                from plots import draw

                pngs, notes = draw(out_dir)
            except ImportError as exc:  # matplotlib is in the `bench` extra
                say(f"# plots not drawn: {exc} (pip install '.[bench]')")
            else:
                written += pngs
                for n in notes:
                    say(f"# note: {n}")
        say(f"# rows by status: {dict(sorted(counts.items()))}; {time.monotonic() - start:.1f} s")
        say(f"# wrote {len(written)} files into {out_dir}: " + ", ".join(p.name for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
