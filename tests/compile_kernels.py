"""Compile every kernel configuration the launchers pick, for each card's CUDA target, with no GPU.

The configurations are not listed anywhere: the workers record the launches the package
makes for ``problems(target)`` (``bench/kernel_launches.py``: the ops run on CPU tensors,
each ``kernel[grid](...)`` is specialised by triton's own binder and recorded instead of
run, with the tiles the launchers choose on that card), then compile, per configuration
(kernel, pointer types, constexprs, launch options), the JIT specialisation whose
launches run the most programs, exactly as that launch would compile it. A new kernel or
tile choice enters by being launched.

Targets: sm_90 (H100/H200, the GPUs the benchmarks run on), sm_86 (RTX 30xx, A6000; sm_89,
RTX 40xx, L4 and L40S, takes the same tiles) and sm_80 (A100). Each gets the benchmark
settings in every dtype variant and every width users have (d 16..128 x c 16..512 in fp32,
tf32 and fp16, and bf16 at the widest: ``kernel_launches.width_problems``); sm_90 also the
problems that reach the chunk-dependent tile choices (small chunks, c over a channel tile
and not a power of two, d 256). A compile takes a second or more, so of the configurations
of one kind (kernel, pointer types, flags, precision, warps, stages) only those no other is
at least as large as in every tile size and width are compiled (``widest``): shared memory
and registers grow with the sizes at equal kind, so these bound the rest. The benchmark
settings' configurations on sm_90 are compiled whatever their sizes (test_sass_density.py
reads their SASS). Each configuration compiles in one JIT specialisation, the one whose
launches run the most programs. The work is split evenly over SHARDS worker processes:

    python tests/compile_kernels.py 0 2     # shard 0 of 2; TRITON_INTERPRET unset
    python tests/compile_kernels.py table   # every shard, then the worst figures per card

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

from kernel_launches import (WIDTHS_C, WIDTHS_D, Launch, Problem, by_configuration,  # noqa: E402
                             compile_launch, record, setting_problems, width_problems)
from sass_metrics import kernel_metrics  # noqa: E402

from nlsa_triton.kernels.tile_tables import SHARED_MEMORY_PER_BLOCK  # noqa: E402

TARGETS = (90, 86, 80)
NO_SPILL_TARGETS = (90, 80)  # sm_86 has sm_80's register file; it is held to its shared memory
# sm_86 runs the code triton generates for sm_80 (the same passes: mma.sync, cp.async; the
# same shared memory, registers within a few): a configuration both launch compiles once,
# for sm_80, and counts for both.
SAME_CODE_AS = {86: 80}
SHARDS = max(2, min(os.cpu_count() or 2, 8))

# (chunk, d, c) problems reaching the launchers' other tile choices: row tiles and steps
# below 64 (chunks 1, 16, 40), c over one channel tile and not a power of two (180, 100),
# wide d (128, 256), in fp32 (FMA tiles) and fp16 (tensor-core tiles).
TILE_PROBLEMS = ((16, 8, 24), (1, 4, 3), (144, 12, 180), (64, 128, 100), (40, 32, 32), (144, 256, 16))


def problems(capability: int) -> list[Problem]:
    """The benchmark settings in every dtype variant, every width users have, and (sm_90)
    the tile problems: several chunks with padding, two images, two rounds, fp32 and fp16."""
    found = setting_problems("Table 2") + setting_problems("NLSN") + width_problems()
    if capability == 90:  # the tables' chunk-dependent rows are the same on every card
        found += [Problem(f"chunk={chunk} d={d} c={c}", 2, 3 * chunk + 7, d, c, 2, chunk, variant, False)
                  for variant in ("fp32", "fp16") for chunk, d, c in TILE_PROBLEMS]
    return found


def _sizes(configuration: tuple) -> tuple[tuple, dict]:
    """(its kind: the configuration without its integer constexprs, its integer constexprs:
    tile rows, widths)."""
    kernel, pointers, constexprs, options = configuration
    sizes = {name: value for name, value in constexprs if isinstance(value, int) and not isinstance(value, bool)}
    return (kernel, pointers, tuple(kv for kv in constexprs if kv[0] not in sizes), options), sizes


def widest(configurations) -> list[tuple]:
    """The configurations of which no other of their kind (kernel, pointer types, flags,
    precision, warps, stages) is at least as large in every tile size and width, and larger
    in one: shared memory and registers grow with the sizes at equal kind, so these bound
    the rest."""
    kinds: dict[tuple, list[tuple[tuple, dict]]] = {}
    for configuration in configurations:
        kind, sizes = _sizes(configuration)
        kinds.setdefault(kind, []).append((configuration, sizes))

    def smaller(a: dict, b: dict) -> bool:
        return a != b and a.keys() == b.keys() and all(a[name] <= b[name] for name in a)

    return [configuration for members in kinds.values() for configuration, sizes in members
            if not any(smaller(sizes, other) for _, other in members)]


def jobs() -> list[dict]:
    """Every compile, in a fixed order: a launch and what its output line says of it."""
    found = []
    for capability in TARGETS:
        launches = record(problems(capability), capability)
        configurations = by_configuration(launches)
        users: dict[tuple, list[Problem]] = {}
        for launch in launches:
            users.setdefault(launch.configuration, []).append(launch.problem)
        kept = set(widest(configurations))
        if capability == 90:  # the benchmark settings' configurations, for test_sass_density.py
            kept |= {c for c, ps in users.items() if any(p.default for p in ps)}
        for configuration, (representative, specialisations) in configurations.items():
            if configuration not in kept:
                continue
            default = any(p.default for p in users[configuration])
            found.append({"launch": representative, "record": _record(representative, users[configuration], default,
                                                                      len(specialisations))})
    # Compiled once for the target whose code the other runs, recorded for both.
    compiled_for = {(job["record"]["sm"], job["launch"].configuration): job for job in found}
    kept_jobs = []
    for job in found:
        sm, configuration = job["record"]["sm"], job["launch"].configuration
        if sm in SAME_CODE_AS and (SAME_CODE_AS[sm], configuration) in compiled_for:
            compiled_for[SAME_CODE_AS[sm], configuration]["record"].setdefault("also_for", []).append(sm)
        else:
            kept_jobs.append(job)
    return kept_jobs


def _record(launch: Launch, users: list[Problem], default: bool, specialisations: int) -> dict:
    declared = {p.name for p in launch.kernel.params if p.is_constexpr}
    return {
        "kernel": launch.kernel_name, "sm": launch.capability,
        "configuration": launch.describe_configuration(),
        "jit_constants": {k: v for k, v in launch.constexpr_values.items() if k not in declared},
        "problems": sorted({p.label for p in users}), "default": default,
        "default_uses": sorted({(p.setting, p.variant) for p in users if p.default}),
        "users_widths": any(p.d <= max(WIDTHS_D) and p.c <= max(WIDTHS_C) for p in users),
        "specialisations": specialisations,
    }


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
    """The records of every configuration compiled for sm_<capability> (or for the target
    whose code it runs, SAME_CODE_AS)."""
    return [r for r in _records() if r["sm"] == capability or capability in r.get("also_for", ())]


def table() -> str:
    """Per card: the largest shared memory of any compile against the card's limit, the
    largest spill, and how many compiles pass either limit or fail."""
    lines = ["| card | compiles | worst shared memory (bytes) / limit | kernel, configuration, a problem | "
             "over the limit | worst spill (bytes) | spilling | errors |", "|---" * 8 + "|"]
    for capability in TARGETS:
        records = compiled(capability)
        ok = [r for r in records if "error" not in r]
        limit = SHARED_MEMORY_PER_BLOCK[capability]
        worst = max(ok, key=lambda r: r["shared_bytes"])
        lines.append(
            f"| sm_{capability} | {len(records)} | {worst['shared_bytes']:,} / {limit:,} | {worst['kernel']} "
            f"[{worst['configuration']}], {worst['problems'][-1]} | "
            f"{sum(r['shared_bytes'] > limit for r in ok)} | {max(r['spill_bytes'] for r in ok):,} | "
            f"{sum(r['spill_bytes'] > 0 for r in ok)} | {len(records) - len(ok)} |")
    lines += [f"- sm_{capability} spills {r['spill_bytes']} B: {r['kernel']} [{r['configuration']}], "
              f"{r['problems'][-1]}" for capability in TARGETS for r in compiled(capability) if r.get("spill_bytes")]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["table"]:
        print(table())
    else:
        main(int(sys.argv[1]), int(sys.argv[2]))
