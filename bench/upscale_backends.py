"""The upscaler's network output on two NLSA backends, before quantisation: are they the same?

    python bench/upscale_backends.py IMAGE --weights W [--backends torch,reference] [--seed 0]

Reads IMAGE as ``python -m nlsa_triton.upscale`` does, runs the checkpoint's NLSN on the
whole image once per backend (each with a fresh generator seeded with --seed, as the CLI
seeds it), and prints each run's wall time and the largest absolute and the relative
difference of the float outputs (in [0, rgb_range], before rounding to 8 bits) against the
last backend listed. Peak memory is not measured here (both runs share one process); time
the CLI under ``/usr/bin/time -v`` for that.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from nlsa_triton.models import NLSN
from nlsa_triton.upscale import read_image, upscale_tensor


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/upscale_backends.py", description=__doc__.split("\n\n")[0])
    p.add_argument("image", type=Path)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--backends", default="torch,reference", help="comma-separated; the last is the baseline")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    model = NLSN.from_file(args.weights).eval()
    lr = read_image(args.image).rgb * model.rgb_range
    print(f"{args.image} {tuple(lr.shape)}, NLSN n_feats {model.n_feats}, n_resblocks {model.n_resblocks}, "
          f"{torch.get_num_threads()} torch threads", flush=True)
    outputs = {}
    for backend in args.backends.split(","):
        model.set_backend(backend)
        start = time.perf_counter()
        outputs[backend] = upscale_tensor(model, lr, generator=torch.Generator().manual_seed(args.seed))
        print(f"{backend}: {time.perf_counter() - start:.1f} s", flush=True)
    baseline = list(outputs)[-1]
    expected = outputs[baseline].double()
    for backend, out in outputs.items():
        if backend == baseline:
            continue
        diff = (out.double() - expected).abs()
        rel = (out.double() - expected).norm() / expected.norm()
        print(f"{backend} vs {baseline}: max |diff| {diff.max().item():.3g} (rgb_range {model.rgb_range:g}), "
              f"relative {rel.item():.3g}, pixels differing by > 1e-5: {int((diff > 1e-5).sum())} "
              f"of {diff.numel()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
