"""Model-level efficiency of NLSN (the paper's supplementary Table 3): the whole network's
forward time, peak memory and FLOPs at 100x100 and 150x150 LR inputs, with the NLSA
blocks on the Triton kernels (nlsn_triton), the torch backend (nlsn_torch) and the
step-by-step torch reference (nlsn_reference; results written before the torch backend
existed, such as bench/results/cpu/nlsn_*.json, call the reference nlsn_torch).

    python bench/nlsn_efficiency.py              # GPU: the paper's NLSN; CPU: --quick
    python bench/nlsn_efficiency.py --full       # the paper's NLSN (256 feats, 32 blocks) on CPU too
    python bench/nlsn_efficiency.py --sizes 100,150 --scale 2 --n-feats 256 --n-resblocks 32 \\
        --providers nlsn_triton,nlsn_torch --dtype fp32 --out /tmp/bench

What is measured: ``NLSN.forward`` under torch.no_grad() on a (batch, 3, H, W) input in
[0, 1], the rotations drawn fresh in every call from one seeded generator, as NLSN does.
Same helpers and conventions as bench/sweep.py (bench/common.py):
- GPU: one warm-up call (compiles the kernels, catches OOM); peak memory of one call as
  the peak allocated minus what was allocated before it, so the weights (``weights_mb``
  in the JSON) and the input are excluded; time from triton.testing.do_bench (median,
  p20, p80). cuDNN convolutions run with torch's defaults (TF32 allowed for convs); the
  JSON records the TF32 settings.
- CPU: nlsn_triton is skipped (the Triton interpreter is never timed). The torch ones, on
  ``--threads`` torch threads (default 1, for times that repeat on a shared machine): a
  warm-up call on an 8x8 input, then the first call at the size, whose peak resident-set
  growth (VmHWM - VmRSS after resetting VmHWM) is peak_mem_mb and which is not timed, then
  perf_counter repeats. Unlike sweep.py this runs in-process (a fresh process per
  configuration would rebuild the network), so memory the allocator kept from an earlier
  configuration can make a later reading low.
- FLOPs: ``NLSN.flops`` counts them analytically, 2 per multiply-accumulate (the
  convention of torch.utils.flop_counter, which the tests check it against on the torch
  backend; FlopCounterMode cannot see the Triton kernels): every convolution, NLSA's
  hash projections and its chunked attention (each sorted row, the padding rows of the
  last chunk included, against its 3 * chunk_size candidates per round). Biases,
  activations, softmax and normalisations are not counted. The count is the algorithm's, so both providers get the same value.

CSV schema: that of sweep.csv (bench/common.py CSV_COLUMNS), mode "fwd", metrics time_ms,
peak_mem_mb and gflops (median = the count in GFLOPs, no p20/p80), channels = n_feats,
n_hashes and chunk_size = the NLSA blocks'. The network settings the schema has no column
for (scale, n_resblocks, reduction, res_scale) are fixed within one run: the files are named
after them, ``nlsn_x<scale>_f<n_feats>_r<n_resblocks>.{csv,json,md}``, and the JSON holds
them all (with the FLOP breakdown, the parameter count and the measurement settings), so
every row keeps sweep.csv's meaning, can be read with common.read_csv, and a file never
mixes two networks.

The paper's Table 3 (RTX 2070; scale and memory definition not stated): NLSN 142 ms,
625 MB, 988 GFLOPs at 100x100; 375 ms, 1199 MB, 2005 GFLOPs at 150x150.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import (  # noqa: E402
    results_dir,
    DEFAULT_CPU_THREADS, MB, CsvWriter, cpu_first_call, cpu_repeats, cpu_time_ms,
    device_name, free_cuda, git_commit, gpu_peak_mb, gpu_time_ms, now_iso, outcome, parse_dtype, parse_size,
    resolve_device, same_status, short_reason, triton_unavailable_reason, triton_version,
)

PROVIDERS = {"nlsn_triton": "triton", "nlsn_torch": "torch", "nlsn_reference": "reference"}
MODE = "fwd"
SIZES = (100, 150)
PAPER_CONFIG = dict(n_feats=256, n_resblocks=32)
QUICK_CONFIG = dict(n_feats=64, n_resblocks=16)
WARMUP_SIDE = 8
# Supplementary Table 3 of the paper: (time ms, memory MB, GFLOPs) per LR side.
PAPER_TABLE3 = {
    "SAN": {100: (320, 1188, 1120), 150: (1540, 4289, 5422)},
    "NLSN": {100: (142, 625, 988), 150: (375, 1199, 2005)},
}


@dataclass
class Settings:
    device: str
    sizes: list  # [(height, width)]
    providers: list
    scale: int
    n_feats: int
    n_resblocks: int
    n_hashes: int
    chunk_size: int
    res_scale: float
    dtype: str
    batch: int
    quick: bool
    cpu_target_s: float
    cpu_min_reps: int
    cpu_max_reps: int
    gpu_warmup_ms: int
    gpu_rep_ms: int
    threads: int | None = None  # CPU: torch threads of the measurements; None on GPU
    seed: int = 0

    @property
    def stem(self) -> str:
        return f"nlsn_x{self.scale}_f{self.n_feats}_r{self.n_resblocks}"


# ---------------------------------------------------------------------------- arguments

def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python bench/nlsn_efficiency.py",
        description="NLSN forward time, peak memory and FLOPs (the paper's Table 3).",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help=f"smaller network: n_feats {QUICK_CONFIG['n_feats']}, n_resblocks "
                           f"{QUICK_CONFIG['n_resblocks']}, fewer repeats (the default on CPU)")
    size.add_argument("--full", action="store_true",
                      help="the paper's network (n_feats 256, n_resblocks 32), the default on GPU")
    p.add_argument("--n-feats", type=int, help="overrides --quick / --full")
    p.add_argument("--n-resblocks", type=int, help="overrides --quick / --full")
    p.add_argument("--scale", type=int, default=2, choices=(2, 3, 4),
                   help="upscaling factor (default 2; the paper does not say which Table 3 used)")
    p.add_argument("--sizes", type=lambda s: [parse_size(t) for t in s.split(",") if t.strip()],
                   help="comma-separated LR sides or HxW (default 100,150)")
    p.add_argument("--providers", type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
                   help=f"comma-separated, default all: {','.join(PROVIDERS)}")
    p.add_argument("--n-hashes", type=int, default=4, help="NLSA hash rounds (default 4)")
    p.add_argument("--chunk-size", type=int, default=144, help="NLSA chunk size (default 144)")
    p.add_argument("--res-scale", type=float, default=0.1, help="residual scaling (default 0.1)")
    p.add_argument("--dtype", type=parse_dtype, default="float32", help="fp32 (default), fp16, bf16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="default: cuda when available, else cpu")
    p.add_argument("--seed", type=int, default=0, help="weights, input and rotations (default 0)")
    p.add_argument("--out", help="output folder; default bench/results/<device-slug>/")
    p.add_argument("--threads", type=int,
                   help=f"CPU: torch threads (default {DEFAULT_CPU_THREADS}, so that times repeat on a "
                        "shared machine; unused on GPU)")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    bad = [v for v in args.providers or [] if v not in PROVIDERS]
    if bad:
        p.error(f"unknown providers {bad}; choose from {', '.join(PROVIDERS)}")
    return args


def make_settings(args) -> Settings:
    device = resolve_device(args.device)
    quick = args.quick or (device == "cpu" and not args.full)
    config = dict(QUICK_CONFIG if quick else PAPER_CONFIG)
    if args.n_feats is not None:
        config["n_feats"] = args.n_feats
    if args.n_resblocks is not None:
        config["n_resblocks"] = args.n_resblocks
    timing = (dict(cpu_target_s=1.0, cpu_min_reps=3, cpu_max_reps=5, gpu_warmup_ms=25, gpu_rep_ms=100)
              if quick else
              dict(cpu_target_s=5.0, cpu_min_reps=3, cpu_max_reps=10, gpu_warmup_ms=100, gpu_rep_ms=1000))
    return Settings(
        device=device, sizes=args.sizes or [(s, s) for s in SIZES],
        providers=args.providers or list(PROVIDERS), scale=args.scale, n_hashes=args.n_hashes,
        chunk_size=args.chunk_size, res_scale=args.res_scale, dtype=args.dtype, batch=args.batch,
        quick=quick, seed=args.seed, **config, **timing,
        threads=None if device == "cuda" else (args.threads or DEFAULT_CPU_THREADS),
    )


# ---------------------------------------------------------------------------- measurement

def build_model(s: Settings):
    from nlsa_triton.models import NLSN

    torch.manual_seed(s.seed)
    model = NLSN(s.scale, n_feats=s.n_feats, n_resblocks=s.n_resblocks, n_hashes=s.n_hashes,
                 chunk_size=s.chunk_size, res_scale=s.res_scale, rgb_range=1)
    return model.to(device=s.device, dtype=getattr(torch, s.dtype)).eval()


def _forward(model, s: Settings, height: int, width: int):
    """The timed call: one no-grad forward, fresh rotations from a seeded generator."""
    gen = torch.Generator(device=s.device).manual_seed(s.seed)
    x = torch.rand((s.batch, 3, height, width), generator=gen, device=s.device).to(getattr(torch, s.dtype))

    def fn():
        with torch.no_grad():
            model(x, generator=gen)
    return fn


def measure_gpu(model, s: Settings, height: int, width: int) -> dict:
    err = None
    try:
        fn = _forward(model, s, height, width)
        fn()  # warm-up: compiles the kernels; an OOM shows here
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        err = outcome(exc)
    if err:
        fn = None
        free_cuda()
        return same_status(*err)
    result = {"reason": ""}
    try:
        result["mem"] = {"status": "ok", "median": gpu_peak_mb(fn)}
        median, p20, p80 = gpu_time_ms(fn, warmup_ms=s.gpu_warmup_ms, rep_ms=s.gpu_rep_ms)
        result["time"] = {"status": "ok", "median": median, "p20": p20, "p80": p80}
    except Exception as exc:  # noqa: BLE001
        status, reason = outcome(exc)
        result.setdefault("mem", {"status": status})
        result["time"], result["reason"] = {"status": status}, reason
    fn = None
    free_cuda()
    return result


def measure_cpu(model, s: Settings, height: int, width: int) -> dict:
    try:
        _forward(model, s, WARMUP_SIDE, WARMUP_SIDE)()
        fn = _forward(model, s, height, width)
        first_s, result = cpu_first_call(fn)  # the untimed warm-up at this size, and the memory reading
    except Exception as exc:  # noqa: BLE001
        return same_status(*outcome(exc))
    try:
        repeats = cpu_repeats(first_s, target_s=s.cpu_target_s, min_reps=s.cpu_min_reps,
                              max_reps=s.cpu_max_reps)
        median, p20, p80 = cpu_time_ms(fn, repeats)
        result["time"] = {"status": "ok", "median": median, "p20": p20, "p80": p80}
    except Exception as exc:  # noqa: BLE001
        status, reason = outcome(exc)
        result["time"], result["reason"] = {"status": status}, reason
    return result


def rows_for(provider: str, s: Settings, height: int, width: int, result: dict, gflops: float,
             meta: dict) -> list[dict]:
    stamp = now_iso()
    base = dict(provider=provider, mode=MODE, height=height, width=width, batch=s.batch,
                channels=s.n_feats, n_hashes=s.n_hashes, chunk_size=s.chunk_size, dtype=s.dtype,
                timestamp=stamp, **meta)
    rows = []
    for metric, key in (("time_ms", "time"), ("peak_mem_mb", "mem")):
        m = result.get(key, {"status": "error"})
        rows.append(dict(base, metric=metric, status=m.get("status", "error"), median=m.get("median"),
                         p20=m.get("p20"), p80=m.get("p80")))
    rows.append(dict(base, metric="gflops", status="ok", median=gflops, p20=None, p80=None))
    return rows


# ---------------------------------------------------------------------------- reporting

def _cell(value, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_table(s: Settings, results: dict, meta: dict, info: dict) -> str:
    """results[(provider, side)] = {"time_ms": x|status, "peak_mem_mb": ..., "gflops": ...}."""
    square = [h for h, w in s.sizes if h == w]
    header = "| Method | " + " | ".join(
        f"{h}×{h} time (ms) | {h}×{h} mem (MB) | {h}×{h} GFLOPs" for h in square) + " |"
    rule = "|---|" + "---:|" * (3 * len(square))
    lines = [
        f"# NLSN model-level efficiency ({s.stem})",
        "",
        f"Device: {meta['device']}. torch {meta['torch']}, triton {meta['triton'] or '—'}, "
        f"commit {meta['commit'] or '—'}.",
        "",
        f"Ours: NLSN x{s.scale}, n_feats {s.n_feats}, n_resblocks {s.n_resblocks} "
        f"({info['n_attention']} NLSA blocks, n_hashes {s.n_hashes}, chunk {s.chunk_size}), "
        f"{info['params'] / 1e6:.2f} M parameters, batch {s.batch}, {s.dtype}, forward under no_grad. "
        "Time: median; memory: peak allocated during the call minus what was allocated before "
        f"(GPU; the weights, {info['weights_mb']:.0f} MiB, are excluded) or peak resident growth "
        "(CPU), MiB; FLOPs: analytic, 2 per multiply-accumulate (see the script's docstring).",
        "",
        "Paper: NLSN supplementary Table 3, one RTX 2070 (mean of 1K runs for Table 2; the "
        "scale and the memory definition are not stated).",
        "",
        header,
        rule,
    ]
    for name, row in PAPER_TABLE3.items():
        cells = []
        for h in square:
            t, m, f = row.get(h, (None, None, None))
            cells += [_cell(t, 0), _cell(m, 0), _cell(f, 0)]
        lines.append(f"| {name} (paper) | " + " | ".join(cells) + " |")
    for provider in s.providers:
        cells = []
        for h in square:
            r = results.get((provider, h), {})
            for metric, digits in (("time_ms", 1), ("peak_mem_mb", 0), ("gflops", 0)):
                v = r.get(metric)
                cells.append(v if isinstance(v, str) else _cell(v, digits))
        lines.append(f"| NLSN {provider} (ours) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(s: Settings, out_dir: Path, say) -> dict:
    if s.threads:
        torch.set_num_threads(s.threads)
    meta = dict(device=device_name(s.device, s.threads), torch=torch.__version__, triton=triton_version(),
                commit=git_commit())
    model = build_model(s)
    params = sum(p.numel() for p in model.parameters())
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / MB
    info = dict(
        network=dict(scale=s.scale, n_feats=s.n_feats, n_resblocks=s.n_resblocks, n_hashes=s.n_hashes,
                     chunk_size=s.chunk_size, reduction=4, res_scale=s.res_scale, rgb_range=1),
        n_attention=len(model.attention_blocks), params=params, weights_mb=weights_mb,
        settings=asdict(s), meta=meta,
        tf32=dict(cudnn=torch.backends.cudnn.allow_tf32, matmul=torch.backends.cuda.matmul.allow_tf32),
        flops={f"{h}x{w}": model.flops(h, w, s.batch) for h, w in s.sizes},
        paper_table3=PAPER_TABLE3,
    )
    say(f"# device: {meta['device']}; torch {meta['torch']}, triton {meta['triton'] or '-'}, "
        f"commit {meta['commit'] or '-'}")
    say(f"# {s.stem}: NLSN x{s.scale}, n_feats {s.n_feats}, n_resblocks {s.n_resblocks}, "
        f"{info['n_attention']} NLSA (n_hashes {s.n_hashes}, chunk {s.chunk_size}), {params / 1e6:.2f} M params, "
        f"{s.dtype}, batch {s.batch}{' (--quick)' if s.quick else ''}")
    writer = CsvWriter(out_dir / f"{s.stem}.csv")
    results = {}
    try:
        for provider in s.providers:
            model.set_backend(PROVIDERS[provider])
            for h, w in s.sizes:
                gflops = info["flops"][f"{h}x{w}"]["total"] / 1e9
                reason = triton_unavailable_reason(s.device) if PROVIDERS[provider] == "triton" else None
                if reason:
                    result = same_status("skipped", reason)
                else:
                    try:
                        result = (measure_gpu if s.device == "cuda" else measure_cpu)(model, s, h, w)
                    except Exception as exc:  # noqa: BLE001 - a status, not a crash
                        result = same_status("error", short_reason(exc))
                    result.setdefault("reason", "")
                for row in rows_for(provider, s, h, w, result, gflops, meta):
                    writer.write(row)
                cell = {k: (m["median"] if m.get("status") == "ok" else m.get("status"))
                        for k, m in (("time_ms", result["time"]), ("peak_mem_mb", result["mem"]))}
                results[(provider, h if h == w else f"{h}x{w}")] = dict(cell, gflops=gflops)
                t, m = result["time"], result["mem"]
                tt = f"{t['median']:.4g} ms [{t['p20']:.3g}, {t['p80']:.3g}]" if t.get("status") == "ok" \
                    else t.get("status")
                mm = f"{m['median']:.4g} MB" if m.get("status") == "ok" else m.get("status")
                note = f"  ({result['reason']})" if result.get("reason") else ""
                say(f"{provider} {h}x{w}: time {tt} | mem {mm} | {gflops:.1f} GFLOPs{note}")
    finally:
        writer.close()
    (out_dir / f"{s.stem}.json").write_text(json.dumps(info, indent=2) + "\n")
    (out_dir / f"{s.stem}.md").write_text(render_table(s, results, meta, info))
    return results


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    s = make_settings(args)
    out_dir = results_dir(args.out, s.device)
    start = time.monotonic()
    run(s, out_dir, lambda line: print(line, flush=True))
    print(f"# wrote {s.stem}.csv, {s.stem}.json, {s.stem}.md into {out_dir} "
          f"({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
