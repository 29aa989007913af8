"""What the benchmark settings' kernels compile to on sm_90, measured with no GPU.

    python bench/sass_report.py                                   # markdown to stdout
    python bench/sass_report.py --out bench/results/sass_sm90.md --section after

Records every launch the package makes for the benchmark settings (Table 2: d 16 / c 64;
NLSN: d 64 / c 256; chunk 144, R 4, a 150 x 150 image) in every dtype variant, with the
argument specialisation a real launch gets (``kernel_launches.py``), compiles each
distinct specialisation for sm_90 and reads the SASS (``sass_metrics.py``). Meanwhile a
subprocess counts, in Triton's interpreter, the MACs every tl.dot issues against the
useful ones (``dot_macs.py``). One row per kernel configuration the launcher picks for a
setting and dtype variant.

With ``--out`` the section (``--section before`` or ``after``) replaces the section of
that name in the file, or is appended; the rest of the file is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # recording needs the compiled kernels' JIT
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, without its warning

import triton  # noqa: E402

import nlsa_triton  # noqa: E402
from kernel_launches import SETTINGS, VARIANTS, by_configuration, compile_launch, distinct, record, setting_problems  # noqa: E402
from sass_metrics import kernel_metrics  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
CAPABILITY = 90

TITLE = "# SASS of the benchmark settings' kernels on sm_90 (no GPU needed)"
EXPLANATION = """\
Written by `python bench/sass_report.py --out bench/results/sass_sm90.md --section <before|after>`.
Every launch the package makes for a setting (hash, forward, backward of a 150 x 150 image,
N 1, R 4, chunk 144) is recorded with the argument specialisation a real launch gets
(pointers aligned to 16 bytes and ints divisible by 16 get divisibility hints, ints equal
to 1 become constants), and each distinct specialisation is compiled for sm_90. One row
per configuration the launcher picks (kernel, pointer types, constexprs, launch options):

- **compiles**: distinct JIT specialisations of the configuration (e.g. per round flags);
  registers, spill and shared memory are the most over them, the loop figures are those of
  the specialisation whose launches run the most programs.
- **loop**: instructions of the main loop, the backward-branch loop of the SASS that does
  the most matrix work (a nested loop counts once), every issued instruction included.
- **FFMA / HMMA / HGMMA**: their counts in that loop; **MMA** the tensor-core opcode.
- **MACs/instr**: multiply-accumulates per issued warp instruction in the loop: FFMA 32,
  HMMA.MNK M·N·K, HGMMA.MxNxK M·N·K/4 (each of a warpgroup's 4 warps issues it).
- **FFMA share**: FFMA / loop instructions.
- **masked**: share of the MACs all of the kernel's tl.dot calls issue that are not useful:
  masked lanes, padded tiles, repeated products (counted in Triton's interpreter at two
  short lengths and extended linearly to L = 22500, exact for tiles of up to 128 rows; see
  `bench/dot_macs.py`). Useful per (query, candidate) occurrence: forward d + c, backward
  dq c + 2d, backward dk/dv 2c + 2d (each backward kernel recomputes the scores once).
  n/a: the kernel issues no tl.dot, or has no formula.
"""


def short_name(kernel: str) -> str:
    return kernel.strip("_").removesuffix("_kernel")


def source_revision() -> str:
    """The commit of the nlsa_triton being measured, and whether its sources differ from it."""
    package = Path(nlsa_triton.__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True,
                              check=False).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line for line in git("status", "--porcelain", "--", ".", "../kernels").splitlines()
               if line.endswith(".py")]
    return commit + (" + uncommitted changes" if changed else "")


def start_masked_share_count(settings, variants) -> subprocess.Popen:
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.Popen([sys.executable, str(BENCH_DIR / "dot_macs.py"), "--settings", *settings,
                             "--variants", *variants], env=env, text=True, stdout=subprocess.PIPE)


def masked_shares(count: subprocess.Popen) -> dict:
    out, _ = count.communicate()
    if count.returncode != 0:
        raise RuntimeError("bench/dot_macs.py failed (its error is above)")
    shares = {}
    for line in out.splitlines():
        entry = json.loads(line)
        for kernel, share in entry["kernels"].items():
            shares[entry["setting"], entry["variant"], kernel] = share["masked_share"]
    return shares


def report_rows(launches, metrics_by_key, shares):
    """One row per (setting, variant, configuration), in launch order."""
    by_problem: dict[tuple, list] = {}
    for launch in launches:
        by_problem.setdefault((launch.problem.setting, launch.problem.variant), []).append(launch)
    rows = []
    for (setting, variant), problem_launches in by_problem.items():
        for representative, specialisations in by_configuration(problem_launches).values():
            kernel = representative.kernel_name
            compiled = [metrics_by_key[kernel, launch.key] for launch in specialisations]
            rows.append({
                "setting": setting, "variant": variant, "kernel": short_name(kernel),
                "configuration": representative.describe_configuration(), "compiles": len(specialisations),
                "registers": max(m["registers"] for m in compiled), "spill": max(m["spill_bytes"] for m in compiled),
                "shared": max(m["shared_bytes"] for m in compiled),
                "loop": metrics_by_key[kernel, representative.key].get("main_loop"),
                "masked": shares.get((setting, variant, kernel)),
            })
    return rows


def _mma_opcodes(shapes) -> str:
    """"HGMMA.64x64x16.F32.BF16" -> "HGMMA.64x64x16": the instruction and its shape."""
    return ", ".join(".".join(shape.split(".")[:2]) for shape in shapes) or "—"


def markdown_table(rows) -> str:
    header = ("| kernel | dtype | configuration | compiles | registers | spill B | shared B | loop | FFMA | HMMA "
              "| HGMMA | MMA | MACs/instr | FFMA share | masked |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        loop = row["loop"]
        loop_cells = (["—"] * 7 if loop is None else
                      [str(loop["instructions"]), str(loop["ffma"]), str(loop["hmma"]), str(loop["hgmma"]),
                       _mma_opcodes(loop["mma_shapes"]), f"{loop['macs_per_instruction']:.1f}",
                       f"{loop['ffma_share']:.0%}"])
        masked = "n/a" if row["masked"] is None else f"{row['masked']:.1%}"
        lines.append("| " + " | ".join([row["kernel"], row["variant"], f"`{row['configuration']}`",
                                        str(row["compiles"]), str(row["registers"]), str(row["spill"]),
                                        str(row["shared"]), *loop_cells, masked]) + " |")
    return "\n".join(lines)


def report_section(name: str, settings, variants) -> str:
    count = start_masked_share_count(settings, variants)
    problems = [p for setting in settings for p in setting_problems(setting, variants)]
    launches = record(problems, CAPABILITY)
    metrics_by_key = {key: kernel_metrics(compile_launch(group[0])) for key, group in distinct(launches).items()}
    rows = report_rows(launches, metrics_by_key, masked_shares(count))
    parts = [f"## {name.capitalize()} (commit {source_revision()})", "",
             (f"triton {triton.__version__}, sm_{CAPABILITY}; command: `python bench/sass_report.py"
              f" --out bench/results/sass_sm90.md --section {name}`.")]
    for setting in settings:
        shape = SETTINGS[setting]
        parts += ["", f"### {setting}: d {shape['d']} / c {shape['c']}", "",
                  markdown_table([row for row in rows if row["setting"] == setting])]
    return "\n".join(parts) + "\n"


def replace_section(document: str, name: str, section: str) -> str:
    """The document with its ``## <Name>`` section replaced by ``section`` (appended if absent)."""
    if not document:
        document = f"{TITLE}\n\n{EXPLANATION}"
    pattern = re.compile(rf"^## {name.capitalize()}\b.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(document):
        return pattern.sub(lambda _: section + "\n", document, count=1).rstrip() + "\n"
    return document.rstrip() + "\n\n" + section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, help="markdown file to write the section into (default: print it)")
    parser.add_argument("--section", default="after", choices=["before", "after"])
    args = parser.parse_args()
    section = report_section(args.section, args.settings, args.variants)
    if args.out is None:
        print(section)
        return
    document = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(replace_section(document, args.section, section))


if __name__ == "__main__":
    main()
