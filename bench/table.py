"""table.md: the paper's Table 2 layout for this device, beside the paper's RTX 2070 numbers.

Usage: python bench/table.py DIR   (reads DIR/sweep.csv, writes DIR/table.md)

Rows NLA, NLSA-r1, r2, r4, r8; columns 100x100 and 150x150, time (ms) and memory (MB).
Our setting: channels 64 (x: d 16, y: c 64; NLA theta/phi 32, g 64), batch 1, chunk 144,
float32, forward only. NLA is nla_torch (NLSN's materialised softmax); NLSA rows come from
the fastest NLSA path measured: nlsa_triton where it has a measurement, else nlsa_torch
(the torch backend), else nlsa_reference (the row says which); the others are listed below,
nlsa_reference among them (NLSN's algorithm as written, what the paper measured).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import read_csv  # noqa: E402

# Mei, Fan, Zhou, "Image Super-Resolution with Non-Local Sparse Attention" (CVPR 2021),
# supplementary Table 2: mean of 1K runs on one RTX 2070. (size: (time ms, mem MB))
PAPER = {
    "NLA": {100: (9.6, 730), 150: (47.3, 3738)},
    "NLSA-r1": {100: (0.9, 45), 150: (4.0, 104)},
    "NLSA-r2": {100: (1.4, 109), 150: (6.2, 242)},
    "NLSA-r4": {100: (2.4, 231), 150: (10.3, 521)},
    "NLSA-r8": {100: (4.3, 509), 150: (16.8, 1074)},
}
SIZES = (100, 150)
SETTING = dict(channels=64, mode="fwd", dtype="float32", batch=1)
OTHER_PROVIDERS = ("nla_sdpa", "nlsa_torch", "nlsa_reference", "nlsa_flex", "nlsa_triton", "criss_cross")
MAIN_NLSA = ("nlsa_triton", "nlsa_torch", "nlsa_reference")  # the main rows' provider: the first measured


def _index(rows):
    return {
        (r["provider"], r["metric"], r["height"], r["width"], r["n_hashes"]): r
        for r in rows
        if r["channels"] == SETTING["channels"] and r["mode"] == SETTING["mode"]
        and r["dtype"] == SETTING["dtype"] and r["batch"] == SETTING["batch"]
        and (r["chunk_size"] in (0, 144))
    }


def _cell(row, digits: int) -> str:
    if row is None:
        return "—"
    if row["status"] != "ok" or row["median"] is None:
        return row["status"]
    return f"{row['median']:.{digits}f}"


def _has_ok(index, provider, n_hashes) -> bool:
    return any(
        (r := index.get((provider, "time_ms", s, s, n_hashes))) is not None and r["status"] == "ok"
        for s in SIZES
    )


def _line(label, source, index, provider, n_hashes, paper=None) -> str:
    cells = []
    for size in SIZES:
        t = index.get((provider, "time_ms", size, size, n_hashes))
        m = index.get((provider, "peak_mem_mb", size, size, n_hashes))
        ours_t, ours_m = _cell(t, 2), _cell(m, 1)
        if paper is not None:
            pt, pm = paper[size]
            cells += [f"{ours_t} / {pt}", f"{ours_m} / {pm}"]
        else:
            cells += [ours_t, ours_m]
    return f"| {label} | {source} | " + " | ".join(cells) + " |"


def render(rows) -> str:
    index = _index(rows)
    device = next((r["device"] for r in rows if r["device"]), "this device")
    versions = next(((r["torch"], r["triton"], r["commit"]) for r in rows), ("", "", ""))
    header = ("| Method | provider (ours) | 100×100 time (ms) | 100×100 mem (MB) "
              "| 150×150 time (ms) | 150×150 mem (MB) |")
    rule = "|---|---|---:|---:|---:|---:|"
    lines = [
        "# Table 2 on this device",
        "",
        f"Device: {device}. torch {versions[0]}, triton {versions[1] or '—'}, commit {versions[2] or '—'}.",
        "",
        "Each cell: **ours / paper** (the paper: NLSN supplementary Table 2, mean of 1K runs on one "
        "RTX 2070). Ours: median time; peak memory allocated by the call minus what was allocated "
        "before it (GPU) or peak resident growth of a fresh process (CPU), in MiB.",
        "Setting: channels 64 (NLSA: x (1, L, 16), y (1, L, 64); NLA: theta, phi (1, L, 32), "
        "g (1, L, 64)), batch 1, chunk 144, float32, forward only, the attention op on given "
        "embeddings (the convolutions that make them are not timed; the paper timed its modules, "
        "so small differences in scope remain). `—`: not in this sweep; a status word: that "
        "configuration's status in sweep.csv.",
        "",
        header,
        rule,
        _line("NLA", "nla_torch", index, "nla_torch", 0, PAPER["NLA"]),
    ]
    used = {("nla_torch", 0)}
    for r in (1, 2, 4, 8):
        provider = next((p for p in MAIN_NLSA if _has_ok(index, p, r)), MAIN_NLSA[-1])
        used.add((provider, r))
        lines.append(_line(f"NLSA-r{r}", provider, index, provider, r, PAPER[f"NLSA-r{r}"]))

    others = []
    for provider in OTHER_PROVIDERS:
        for r in ((1, 2, 4, 8) if provider.startswith("nlsa") else (0,)):
            if (provider, r) not in used and any(k[0] == provider and k[4] == r for k in index):
                others.append(_line(f"NLSA-r{r}" if r else provider, provider, index, provider, r))
    if others:
        lines += [
            "",
            "Other providers at the same setting (ours only):",
            "",
            header,
            rule,
            *others,
        ]
    return "\n".join(lines) + "\n"


def write_table(csv_path: Path, out_path: Path) -> Path:
    out_path = Path(out_path)
    out_path.write_text(render(read_csv(csv_path)))
    return out_path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python bench/table.py DIR  (reads DIR/sweep.csv, writes DIR/table.md)", file=sys.stderr)
        return 2
    out = write_table(Path(argv[0]) / "sweep.csv", Path(argv[0]) / "table.md")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
