"""Compile every kernel configuration the launchers pick, for CUDA targets, with no GPU.

The configurations are not listed anywhere: the workers record the launches the package
makes for ``problems(target)`` (``bench/kernel_launches.py``: the ops run on CPU tensors,
each ``kernel[grid](...)`` is specialised by triton's own binder and recorded instead of
run), then compile, per configuration (kernel, pointer types, constexprs, launch
options), the JIT specialisation whose launches run the most programs, exactly as that
launch would compile it. A new kernel or tile choice enters by being launched.

sm_90 (H100/H200, the GPUs the benchmarks run on) gets the benchmark settings in every
dtype variant, each of their configurations in every JIT specialisation it is launched
with (per-round integer-1 constants change prologues and epilogues, and with them
registers), and the problems that reach the other tile choices; sm_80 (A100) the
benchmark settings' configurations. Each compile takes a second or more, so the work is
split evenly over SHARDS worker processes:

    python tests/compile_kernels.py 0 2     # shard 0 of 2; TRITON_INTERPRET unset

Each output line, one per compile: kernel, sm, configuration, the JIT's integer
constants, the problems that launch it, whether a benchmark setting does (``default``),
the configuration's number of JIT specialisations, then registers, spills, shared memory and the main loop's SASS
figures (``bench/sass_metrics.py``), or the compile error. In a test session
``compiled(sm)`` runs the workers once and returns their records to
test_triton_compile.py and test_sass_density.py.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from kernel_launches import Problem, by_configuration, compile_launch, record, setting_problems  # noqa: E402
from sass_metrics import kernel_metrics  # noqa: E402

TARGETS = (90, 80)
ALL_PROBLEMS_TARGETS = (90,)  # the others compile the benchmark settings only
SHARDS = max(2, min(os.cpu_count() or 2, 8))

# (chunk, d, c) problems reaching the launchers' other tile choices: row tiles and steps
# below 64 (chunks 1, 16, 40), c over one channel tile and not a power of two (180, 100),
# wide d (128, 256), in fp32 (FMA tiles) and fp16 (tensor-core tiles).
TILE_PROBLEMS = ((16, 8, 24), (1, 4, 3), (144, 12, 180), (64, 128, 100), (40, 32, 32), (144, 256, 16))


def problems(capability: int) -> list[Problem]:
    """The benchmark settings in every dtype variant, then (for ALL_PROBLEMS_TARGETS) the
    tile problems: several chunks with padding, two images, two rounds, fp32 and fp16."""
    found = setting_problems("Table 2") + setting_problems("NLSN")
    if capability in ALL_PROBLEMS_TARGETS:
        found += [Problem(f"chunk={chunk} d={d} c={c}", 2, 3 * chunk + 7, d, c, 2, chunk, variant, False)
                  for variant in ("fp32", "fp16") for chunk, d, c in TILE_PROBLEMS]
    return found


def jobs() -> list[dict]:
    """Every compile, in a fixed order: a launch and what its output line says of it. Per
    target and configuration the representative specialisation; on sm_90 every
    specialisation of the benchmark settings' configurations (a spill in any of them is
    a spill in the benchmark)."""
    found = []
    for capability in TARGETS:
        launches = record(problems(capability), capability)
        for configuration, (representative, specialisations) in by_configuration(launches).items():
            users = [other.problem for other in launches if other.configuration == configuration]
            default = any(p.default for p in users)
            compiled = specialisations if default and capability in ALL_PROBLEMS_TARGETS else [representative]
            for launch in compiled:
                declared = {p.name for p in launch.kernel.params if p.is_constexpr}
                found.append({"launch": launch, "record": {
                    "kernel": launch.kernel_name, "sm": capability,
                    "configuration": launch.describe_configuration(),
                    "jit_constants": {k: v for k, v in launch.constexpr_values.items() if k not in declared},
                    "problems": sorted({p.label for p in users}), "default": default,
                    "default_uses": sorted({(p.setting, p.variant) for p in users if p.default}),
                    "specialisations": len(specialisations),
                }})
    return found


def main(shard: int, shards: int) -> None:
    for job in jobs()[shard::shards]:
        result = job["record"]
        try:
            result.update(kernel_metrics(compile_launch(job["launch"])))
        except Exception as error:  # reported, and failed on, by the test
            result["error"] = f"{type(error).__name__}: {error}"[:2000]
        print(json.dumps(result), flush=True)


@functools.cache
def _workers() -> list[tuple[subprocess.Popen, IO[str], IO[str]]]:
    # Output goes to files, not pipes: a worker must never wait for the test to read it.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, without its warning
    workers = []
    for shard in range(SHARDS):
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        workers.append((subprocess.Popen([sys.executable, __file__, str(shard), str(SHARDS)], env=env,
                                         stdout=out, stderr=err), out, err))
    return workers


def start() -> None:
    """Start the workers (if not yet started) and return at once."""
    _workers()


@functools.cache
def _records() -> list[dict]:
    records = []
    for worker, out, err in _workers():
        worker.wait(timeout=1800)
        out.seek(0)
        err.seek(0)
        assert worker.returncode == 0, err.read()[-3000:]
        records += [json.loads(line) for line in out]
    return records


def compiled(capability: int) -> list[dict]:
    """The records of every configuration compiled for sm_<capability>."""
    return [r for r in _records() if r["sm"] == capability]


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
