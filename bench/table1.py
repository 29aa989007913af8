"""NLSN's Table 1 (the attention ablation) with nlsa_triton's trainer and evaluator.

Trains edsr, edsr-nla, edsr-cc and edsr-nlsa with one recipe on the same data, for each
seed, evaluates each with ``python -m nlsa_triton.evaluate`` the same way, and writes a
markdown table (PSNR-Y / SSIM-Y per seed, their mean, wall times) beside the paper's
Set5 x2 figures. The arguments after ``--`` go to every training run, so the paper-scale
run on a GPU is the same command with the recipe's defaults::

    python bench/table1.py --data DIV2K --eval-data benchmark --eval-set Set5 --out runs/table1 \\
        --seeds 1,2 -- --n-feats 256 --n-resblocks 32

A trained run (``model.pt``) is not trained again, and an evaluated one (``seconds.json``,
the evaluation's wall time) is collected, not repeated, so seeds can run as
parallel invocations (``--seeds 2``) and a last ``--seeds 1,2`` writes the whole table.
The CPU miniature (bench/results/cpu/table1.md) gives its command at its top.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ARCHS = ("edsr", "edsr-nla", "edsr-cc", "edsr-nlsa")
#: NLSN (Mei et al., CVPR 2021), Table 1: Set5 x2 PSNR of the attention ablation.
PAPER = {"edsr": 37.78, "edsr-nla": 37.86, "edsr-cc": 37.83, "edsr-nlsa": 37.92}


def _train_seconds(run: Path) -> float:
    """The training loop's seconds, from the last row of the run's log.csv."""
    with open(run / "log.csv") as f:
        return float(list(csv.DictReader(f))[-1]["seconds"])


def _means(run: Path) -> tuple[float, float]:
    """Mean PSNR-Y and SSIM-Y of a run's evaluation (its metrics.csv)."""
    with open(run / "eval" / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    return (sum(float(m["psnr_y"]) for m in metrics) / len(metrics),
            sum(float(m["ssim_y"]) for m in metrics) / len(metrics))


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="training data (--data of the trainer)")
    p.add_argument("--eval-data", required=True, help="benchmark root for the evaluation")
    p.add_argument("--eval-set", default="Set5")
    p.add_argument("--scale", default="2")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--archs", default=",".join(ARCHS))
    args = p.parse_args(own)
    rows = []
    for seed in args.seeds.split(","):
        for arch in args.archs.split(","):
            run = args.out / f"{arch}-seed{seed}"
            timing = run / "seconds.json"
            if timing.is_file():  # done by an earlier (or a parallel) invocation: collect it
                rows.append((arch, seed, *_means(run), _train_seconds(run), json.loads(timing.read_text())))
                continue
            if not (run / "model.pt").is_file():
                subprocess.run([sys.executable, "-m", "nlsa_triton.train", "--data", args.data, "--save", str(run),
                                "--arch", arch, "--scale", args.scale, "--seed", seed, "--quiet", *extra],
                               check=True)
            trained = _train_seconds(run)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "nlsa_triton.evaluate", "--weights", str(run / "model.pt"),
                            "--data", args.eval_data, "--sets", args.eval_set, "--scale", args.scale,
                            "--seed", "0", "--out", str(run / "eval"), "--quiet"], check=True)
            evaluated = time.perf_counter() - started
            timing.write_text(json.dumps(evaluated))
            psnr, ssim = _means(run)
            rows.append((arch, seed, psnr, ssim, trained, evaluated))
            print(f"{arch} seed {seed}: PSNR-Y {psnr:.3f} dB, SSIM-Y {ssim:.4f}, train {trained:.0f} s", flush=True)
    seeds = args.seeds.split(",")
    lines = ["| variant | " + " | ".join(f"seed {s} PSNR-Y / SSIM-Y" for s in seeds)
             + " | mean PSNR-Y | train s (per seed) | eval s | paper Set5 x2 |",
             "|---|" + "---:|" * (len(seeds) + 4)]
    for arch in args.archs.split(","):
        mine = [r for r in rows if r[0] == arch]
        cells = " | ".join(f"{r[2]:.3f} / {r[3]:.4f}" for r in mine)
        lines.append(f"| {arch} | {cells} | {sum(r[2] for r in mine) / len(mine):.3f} | "
                     f"{' / '.join(f'{r[4]:.0f}' for r in mine)} | {' / '.join(f'{r[5]:.0f}' for r in mine)} | "
                     f"{PAPER.get(arch, '')} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table1.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
