"""Write an NLSN checkpoint with random (seeded) weights, for timing the upscaler on a CPU.

    python bench/make_random_nlsn.py nlsn_x2_small.pt                       # x2, 32 features, 16 blocks
    python bench/make_random_nlsn.py nlsn_x2_paper.pt --feats 256 --blocks 32   # the paper's NLSN

The weights are PyTorch's default initialisation under ``torch.manual_seed(--seed)``, so
the same command writes the same tensors. The file is a plain state dict with NLSN's keys
(what ``NLSN.from_state_dict`` and the upscaler read); the network's configuration is
inferred from it. The paper-sized one is about 150 MB: make it where it is needed, do not
commit it. bench/README.md lists the upscale runs these checkpoints are used for.
"""
from __future__ import annotations

import argparse
import sys

import torch

from nlsa_triton.models import NLSN


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/make_random_nlsn.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="where to write the state dict (.pt)")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--feats", type=int, default=32, help="n_feats (default 32; the paper: 256)")
    p.add_argument("--blocks", type=int, default=16, help="n_resblocks (default 16; the paper: 32)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    model = NLSN(args.scale, n_feats=args.feats, n_resblocks=args.blocks)
    torch.save(model.state_dict(), args.out)
    n_params = sum(t.numel() for t in model.state_dict().values())
    print(f"wrote {args.out}: NLSN x{args.scale}, {args.feats} features, {args.blocks} residual blocks, "
          f"{len(model.attention_blocks)} NLSA blocks, {n_params / 1e6:.2f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
