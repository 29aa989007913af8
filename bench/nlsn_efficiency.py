"""Model-level efficiency of NLSN (the paper's supplementary Table 3): the whole network's
forward time, peak memory and FLOPs at 100x100 and 150x150 LR inputs, with the NLSA
blocks on the Triton kernels (nlsn_triton), the torch backend (nlsn_torch) and the
step-by-step reference (nlsn_reference; results written before the torch backend existed,
such as bench/results/cpu/nlsn_x2_f256_r32.*, call the reference nlsn_torch).

    python bench/nlsn_efficiency.py              # GPU: the paper's NLSN; CPU: --quick
    python bench/nlsn_efficiency.py --full       # the paper's NLSN (256 feats, 32 blocks) on CPU too
    python bench/nlsn_efficiency.py --sizes 100,150 --scale 2 --n-feats 256 --n-resblocks 32 \\
        --providers nlsn_triton,nlsn_torch --dtype fp32 --out /tmp/bench

What is measured: ``NLSN.forward`` under no_grad on a (batch, 3, H, W) input in [0, 1], the
rotations drawn fresh in every call from one seeded generator, as NLSN does, through
bench/harness.py like the sweep: the weights and the input are built by the setup, so
they are excluded from memory (GPU: peak allocated minus allocated before; CPU: peak
resident growth of a fresh process, with an 8x8 warm-up first); cuDNN convolutions run
with torch's defaults (the JSON records the TF32 settings).
FLOPs: ``NLSN.flops`` counts them analytically, 2 per multiply-accumulate (the convention
of torch.utils.flop_counter, which the tests check it against; FlopCounterMode cannot see
the Triton kernels): every convolution, NLSA's hash projections and its chunked attention
(each sorted row, the last chunk's padding rows included, against 3 * chunk_size
candidates per round); biases, activations, softmax and normalisations are not counted.

Output: ``nlsn_x<scale>_f<n_feats>_r<n_resblocks>.{csv,json,md}`` in --out. The CSV has
sweep.csv's columns (bench/schema.py), mode "fwd", metrics time_ms, peak_mem_mb and gflops
(median = the count in GFLOPs), channels = n_feats; what the columns do not hold (scale,
n_resblocks, res_scale) is in the file name and the JSON (with the FLOP breakdown, the
parameter count and the settings), so a file never mixes two networks. The .md is
table.py's Table 3 layout, the paper's numbers beside ours.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import harness  # noqa: E402
from schema import MB, Config, CsvWriter, Metric, describe, meta, results_dir  # noqa: E402
from table import PAPER_TABLE3, write_table3  # noqa: E402

PROVIDERS = {"nlsn_triton": "triton", "nlsn_torch": "torch", "nlsn_reference": "reference"}
SIZES = (100, 150)
PAPER_CONFIG = dict(n_feats=256, n_resblocks=32)
QUICK_CONFIG = dict(n_feats=64, n_resblocks=16)
TIMING = {"quick": harness.Timing(1.0, 3, 5, 25, 100), "full": harness.Timing(5.0, 3, 10, 100, 1000)}


def parse_args(argv):
    p = harness.parser("python bench/nlsn_efficiency.py", "NLSN forward time, peak memory and FLOPs (Table 3).",
                       PROVIDERS, "default 100,150")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"smaller network: n_feats {QUICK_CONFIG['n_feats']}, "
                      f"n_resblocks {QUICK_CONFIG['n_resblocks']}, fewer repeats (the default on CPU)")
    size.add_argument("--full", action="store_true",
                      help="the paper's network (n_feats 256, n_resblocks 32), the default on GPU")
    p.add_argument("--n-feats", type=int, help="overrides --quick / --full")
    p.add_argument("--n-resblocks", type=int, help="overrides --quick / --full")
    p.add_argument("--scale", type=int, default=2, choices=(2, 3, 4),
                   help="upscaling factor (default 2; the paper does not say which Table 3 used)")
    p.add_argument("--n-hashes", type=int, default=4, help="NLSA hash rounds (default 4)")
    p.add_argument("--res-scale", type=float, default=0.1, help="residual scaling (default 0.1)")
    p.add_argument("--dtype", type=harness.parse_dtype, default="float32", help="fp32 (default), fp16, bf16")
    p.add_argument("--batch", type=int, default=1)
    args = harness.parse(p, argv, {"providers": PROVIDERS})
    args.quick = args.quick or (args.device == "cpu" and not args.full)
    net = QUICK_CONFIG if args.quick else PAPER_CONFIG
    args.n_feats = args.n_feats if args.n_feats is not None else net["n_feats"]
    args.n_resblocks = args.n_resblocks if args.n_resblocks is not None else net["n_resblocks"]
    args.sizes = args.sizes or [(s, s) for s in SIZES]
    args.providers = args.providers or list(PROVIDERS)
    args.timing = TIMING["quick" if args.quick else "full"]
    return args


def build_model(device: str, seed: int, scale: int, n_resblocks: int, res_scale: float, cfg: Config):
    from nlsa_triton.models import NLSN

    torch.manual_seed(seed)
    model = NLSN(scale, n_feats=cfg.channels, n_resblocks=n_resblocks, n_hashes=cfg.n_hashes,
                 chunk_size=cfg.chunk_size, res_scale=res_scale, rgb_range=1)
    return model.to(device=device, dtype=getattr(torch, cfg.dtype)).eval()


def setup(cfg: Config, device: str, seed: int, **network):
    """The network (seeded weights) on the provider's backend and a seeded input; the call."""
    model = build_model(device, seed, cfg=cfg, **network).set_backend(PROVIDERS[cfg.provider])
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand((cfg.batch, 3, cfg.height, cfg.width), generator=gen, device=device).to(getattr(torch, cfg.dtype))

    def fn():
        with torch.no_grad():
            model(x, generator=gen)
    return fn


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    columns = meta(args.device, args.threads)  # git status first, before anything is written
    out_dir = results_dir(args.out, args.device, args.replace_committed)
    start = time.monotonic()
    stem = f"nlsn_x{args.scale}_f{args.n_feats}_r{args.n_resblocks}"
    network = dict(scale=args.scale, n_resblocks=args.n_resblocks, res_scale=args.res_scale)
    configs = [Config(p, "fwd", h, w, args.n_feats, args.n_hashes, args.chunk_size, args.dtype, args.batch)
               for p in args.providers for h, w in args.sizes]
    model = build_model("cpu", args.seed, cfg=configs[0], **network)  # for the counts, never run
    info = dict(
        network=dict(network, n_feats=args.n_feats, n_hashes=args.n_hashes, chunk_size=args.chunk_size,
                     reduction=4, rgb_range=1),
        n_attention=len(model.attention_blocks), params=sum(p.numel() for p in model.parameters()),
        weights_mb=sum(p.numel() * p.element_size() for p in model.parameters()) / MB,
        settings=dict(device=args.device, sizes=args.sizes, providers=args.providers, dtype=args.dtype,
                      batch=args.batch, quick=args.quick, threads=args.threads, seed=args.seed,
                      **dataclasses.asdict(args.timing)),
        meta=columns,
        tf32=dict(cudnn=torch.backends.cudnn.allow_tf32, matmul=harness.tf32_matmuls()),
        flops={f"{h}x{w}": model.flops(h, w, args.batch) for h, w in args.sizes},
        paper_table3=PAPER_TABLE3,
    )
    del model
    print(describe(columns))
    print(f"# {stem}: NLSN x{args.scale}, n_feats {args.n_feats}, n_resblocks {args.n_resblocks}, "
          f"{info['n_attention']} NLSA (n_hashes {args.n_hashes}, chunk {args.chunk_size}), "
          f"{info['params'] / 1e6:.2f} M params, {args.dtype}, batch {args.batch}{' (--quick)' if args.quick else ''}",
          flush=True)

    def skip(cfg, done, elapsed):
        return harness.triton_unavailable_reason(args.device) if PROVIDERS[cfg.provider] == "triton" else None

    def gflops(cfg):
        return {"gflops": Metric("ok", info["flops"][f"{cfg.height}x{cfg.width}"]["total"] / 1e9)}

    runner = harness.Runner(args.device, timing=args.timing, threads=args.threads, timeout_s=7200.0)
    writer = CsvWriter(out_dir / f"{stem}.csv", columns)
    try:
        harness.run_grid(configs, functools.partial(setup, device=args.device, seed=args.seed, **network), runner,
                         writer, lambda line: print(line, flush=True), skip, gflops)
    finally:
        writer.close()
    (out_dir / f"{stem}.json").write_text(json.dumps(info, indent=2) + "\n")
    write_table3(out_dir / f"{stem}.csv")
    print(f"# wrote {stem}.csv, {stem}.json, {stem}.md into {out_dir} ({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
