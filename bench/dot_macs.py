"""The share of the MACs a kernel's tl.dot calls issue that are masked away or repeated.

In Triton's interpreter (TRITON_INTERPRET=1 when nlsa_triton is imported) programs run
one after another and every tl.dot is one call of the interpreter builder's
``create_dot`` with the program's whole tiles, so summing M·N·K over those calls gives
the MACs the compiled kernel issues, masked lanes and padded tiles included.

The useful MACs are what the algorithm needs for each (query, candidate) occurrence,
of which there are N·R·L·3K (K = min(chunk_size, L): every query of every round against
its 3K candidates):

- forward: the score x_i . k_j (d) and p_ij y_j (c): d + c;
- backward dq: the recomputed score (d), dO_i . y_j (c), dS_ij k_j (d): c + 2d;
- backward dk/dv: the recomputed score (d), dO_i . y_j (c), p_ij dO_i (c), dS_ij x_i (d):
  2c + 2d.

A backward kernel must recompute the scores (none are stored), so that product is
useful; a product computed twice (in two passes, or once per channel tile) counts the
repeat as waste, like masked lanes. Kernels without a formula here (hash, staging) get
no share.

The interpreter is slow (a 150 x 150 image takes hours), but the issued MACs grow by
the same amount with every TILE_PERIOD chunks added to a long sequence: tiles of any
power of two up to 128 rows meet the chunk boundaries (144) in a pattern that repeats
every lcm(128, 144) = 1152 positions = 8 chunks. So the MACs are counted at two short
lengths with the benchmark's remainder L mod K and chunk count congruent modulo the
period, and extended linearly to the benchmark's L: exact for such tiles, the start,
the wrap-around and the partial last chunk included. Counting uses one image and one
round (the share is the same in every round). Every launch runs: a kernel may branch on
what an earlier launch wrote (the forward's fast and exact paths read the staging
pass's non-finite flags), so none can be skipped; the inputs are finite, as a
benchmark's are.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from collections import Counter

import numpy as np
from triton.runtime import interpreter

from kernel_launches import Problem, SETTINGS, VARIANTS, defined_kernels, run_problem, setting_problems

USEFUL_MACS_PER_OCCURRENCE = {
    "_chunked_attention_fwd_kernel": lambda d, c: d + c,
    "_chunked_attention_bwd_dq_kernel": lambda d, c: c + 2 * d,
    "_chunked_attention_bwd_dkdv_kernel": lambda d, c: 2 * c + 2 * d,
}

TILE_PERIOD = 8  # chunks after which the tiles' pattern across chunk boundaries repeats
FIRST_COUNTED_CHUNKS = 4  # full chunks of the shorter counted length, at least: past the wrap-around


def useful_macs(kernel_name: str, problem: Problem) -> int | None:
    per_occurrence = USEFUL_MACS_PER_OCCURRENCE.get(kernel_name)
    if per_occurrence is None:
        return None
    chunk = min(problem.chunk_size, problem.length)
    return problem.n * problem.rounds * problem.length * 3 * chunk * per_occurrence(problem.d, problem.c)


@contextlib.contextmanager
def counting_dot_macs():
    """Within the block, the yielded Counter sums the MACs of every tl.dot per kernel name."""
    builder = interpreter.interpreter_builder
    counts: Counter = Counter()
    running: list[str] = []
    original_run, original_dot = interpreter.InterpretedFunction.run, builder.create_dot

    def run(self, *args, **kwargs):
        running.append(self.__name__)
        try:
            return original_run(self, *args, **kwargs)
        finally:
            running.pop()

    def create_dot(a, b, *rest):
        # a: (..., M, K), b: (..., K, N): M·N·K multiply-accumulates per batch entry.
        counts[running[-1]] += int(np.prod(a.data.shape)) * b.data.shape[-1]
        return original_dot(a, b, *rest)

    interpreter.InterpretedFunction.run = run
    builder.create_dot = create_dot
    try:
        yield counts
    finally:
        interpreter.InterpretedFunction.run = original_run
        del builder.create_dot  # back to the class's method


def _issued_macs(problem: Problem) -> Counter:
    with counting_dot_macs() as issued:
        run_problem(problem)
    return issued


def issued_macs(problem: Problem) -> Counter:
    """MACs the problem's tl.dot calls issue, per kernel, for one image and one round."""
    one = dataclasses.replace(problem, n=1, rounds=1)
    chunk = min(problem.chunk_size, problem.length)
    full_chunks, remainder = divmod(problem.length, chunk)
    if full_chunks < FIRST_COUNTED_CHUNKS + 2 * TILE_PERIOD:
        return _issued_macs(one)  # short enough to count as it is
    first = FIRST_COUNTED_CHUNKS + (full_chunks - FIRST_COUNTED_CHUNKS) % TILE_PERIOD
    short = _issued_macs(dataclasses.replace(one, length=first * chunk + remainder))
    longer = _issued_macs(dataclasses.replace(one, length=(first + TILE_PERIOD) * chunk + remainder))
    periods = (full_chunks - first) // TILE_PERIOD
    return Counter({name: short[name] + periods * (longer[name] - short[name]) for name in short | longer})


def masked_shares(problem: Problem) -> dict[str, dict]:
    """Per kernel of the problem: issued and useful MACs (one image, one round) and the
    share of issued MACs that are not useful (None where the kernel has no formula)."""
    if not all(isinstance(kernel, interpreter.InterpretedFunction) for kernel in defined_kernels()):
        raise RuntimeError("count dot MACs in Triton's interpreter: set TRITON_INTERPRET=1 before importing "
                           "nlsa_triton")
    one = dataclasses.replace(problem, n=1, rounds=1)
    shares = {}
    for name, macs in issued_macs(problem).items():
        useful = useful_macs(name, one)
        shares[name] = {"issued_macs": macs, "useful_macs": useful,
                        "masked_share": None if useful is None or not macs else 1 - useful / macs}
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description="Masked-MAC shares of the benchmark settings, as JSON lines "
                                                 "(run with TRITON_INTERPRET=1).")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    for setting in args.settings:
        for problem in setting_problems(setting, args.variants):
            print(json.dumps({"setting": setting, "variant": problem.variant,
                              "kernels": masked_shares(problem)}), flush=True)


if __name__ == "__main__":
    main()
