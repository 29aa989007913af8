"""The paper's figures (NLSN supplementary Tables 2 and 3), and ours beside them, from the CSVs.

    python bench/table.py DIR   # DIR/sweep.csv -> DIR/table.md; DIR/nlsn_*.csv (+ .json) -> DIR/nlsn_*.md

table.md, Table 2's layout: rows NLA, NLSA-r1, r2, r4, r8; columns 100x100 and 150x150, time
(ms) and memory, ours (MiB) and then the paper's (RTX 2070, MB as it gives them) in columns of
their own, at channels 64 (x: d 16, y: c 64; NLA theta/phi 32, g 64), batch 1,
chunk 144, float32, forward. NLA is nla_torch (NLSN's materialised softmax); the NLSA rows
come from the fastest NLSA path measured (nlsa_triton, else nlsa_torch, else
nlsa_reference; the row says which); the other providers are listed below.
nlsn_*.md, Table 3's layout: NLSN's forward time, memory and GFLOPs per provider and size.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from schema import read_csv  # noqa: E402

# Mei, Fan, Zhou, "Image Super-Resolution with Non-Local Sparse Attention" (CVPR 2021),
# supplementary material, one RTX 2070. Table 2 (mean of 1K runs): size -> (time ms, mem MB).
PAPER_TABLE2 = {
    "NLA": {100: (9.6, 730), 150: (47.3, 3738)},
    "NLSA-r1": {100: (0.9, 45), 150: (4.0, 104)},
    "NLSA-r2": {100: (1.4, 109), 150: (6.2, 242)},
    "NLSA-r4": {100: (2.4, 231), 150: (10.3, 521)},
    "NLSA-r8": {100: (4.3, 509), 150: (16.8, 1074)},
}
# Table 3 (the whole network; the scale and the memory definition are not stated):
# LR side -> (time ms, memory MB, GFLOPs).
PAPER_TABLE3 = {
    "SAN": {100: (320, 1188, 1120), 150: (1540, 4289, 5422)},
    "NLSN": {100: (142, 625, 988), 150: (375, 1199, 2005)},
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


def _value(row, digits: int) -> str:
    if row is None:
        return "—"
    return f"{row['median']:.{digits}f}" if row["status"] == "ok" and row["median"] is not None else row["status"]


def _has_ok(index, provider, n_hashes) -> bool:
    return any(
        (r := index.get((provider, "time_ms", s, s, n_hashes))) is not None and r["status"] == "ok"
        for s in SIZES
    )


def _line(label, source, index, provider, n_hashes, paper=None) -> str:
    """A row: label, provider, our time and memory per size, then the paper's (when given)."""
    cells = []
    for size in SIZES:
        cells += [_value(index.get((provider, "time_ms", size, size, n_hashes)), 2),
                  _value(index.get((provider, "peak_mem_mb", size, size, n_hashes)), 1)]
    if paper is not None:
        cells += [str(v) for size in SIZES for v in paper[size]]
    return f"| {label} | {source} | " + " | ".join(cells) + " |"


def _header(with_paper: bool) -> list[str]:
    ours = [f"{s}×{s} {what}" for s in SIZES for what in ("time (ms)", "mem (MiB)")]
    paper = [f"paper {s}×{s} {what}" for s in SIZES for what in ("time (ms)", "mem (MB)")] if with_paper else []
    columns = ["Method", "provider (ours)", *ours, *paper]
    return ["| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 2)]


def render_table2(rows) -> str:
    index = _index(rows)
    device = next((r["device"] for r in rows if r["device"]), "this device")
    versions = next(((r["torch"], r["triton"], r["commit"]) for r in rows), ("", "", ""))
    lines = [
        "# Table 2 on this device",
        "",
        f"Device: {device}. torch {versions[0]}, triton {versions[1] or '—'}, commit {versions[2] or '—'}.",
        "",
        "Ours, on the device above: median time; peak memory allocated by the call minus what was "
        "allocated before it (GPU) or peak resident growth of a fresh process (CPU), in MiB. "
        "The paper's, in the columns marked paper: NLSN supplementary Table 2, mean of 1K runs on one "
        "RTX 2070, memory in MB as the paper gives it. Another device: compare with care.",
        "Setting: channels 64 (NLSA: x (1, L, 16), y (1, L, 64); NLA: theta, phi (1, L, 32), "
        "g (1, L, 64)), batch 1, chunk 144, float32, forward only, the attention op on given "
        "embeddings (the convolutions that make them are not timed; the paper timed its modules, "
        "so small differences in scope remain). `—`: not in this sweep; a status word: that "
        "configuration's status in sweep.csv.",
        "",
        *_header(with_paper=True),
        _line("NLA", "nla_torch", index, "nla_torch", 0, PAPER_TABLE2["NLA"]),
    ]
    used = {("nla_torch", 0)}
    for r in (1, 2, 4, 8):
        provider = next((p for p in MAIN_NLSA if _has_ok(index, p, r)), MAIN_NLSA[-1])
        used.add((provider, r))
        lines.append(_line(f"NLSA-r{r}", provider, index, provider, r, PAPER_TABLE2[f"NLSA-r{r}"]))

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
            *_header(with_paper=False),
            *others,
        ]
    return "\n".join(lines) + "\n"


def render_table3(rows, info: dict) -> str:
    """nlsn_*.md from its CSV rows and its JSON (network, parameters, settings)."""
    net, settings, m = info["network"], info["settings"], info["meta"]
    index = {(r["provider"], r["metric"], r["height"]): r for r in rows if r["height"] == r["width"]}
    sides = list(dict.fromkeys(r["height"] for r in rows if r["height"] == r["width"]))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    lines = [
        f"# NLSN model-level efficiency (nlsn_x{net['scale']}_f{net['n_feats']}_r{net['n_resblocks']})",
        "",
        f"Device: {m['device']}. torch {m['torch']}, triton {m['triton'] or '—'}, commit {m['commit'] or '—'}.",
        "",
        f"Ours: NLSN x{net['scale']}, n_feats {net['n_feats']}, n_resblocks {net['n_resblocks']} "
        f"({info['n_attention']} NLSA blocks, n_hashes {net['n_hashes']}, chunk {net['chunk_size']}), "
        f"{info['params'] / 1e6:.2f} M parameters, batch {settings['batch']}, {settings['dtype']}, forward under "
        "no_grad. Time: median; memory: peak allocated during the call minus what was allocated before "
        f"(GPU; the weights, {info['weights_mb']:.0f} MiB, are excluded) or peak resident growth of a fresh "
        "process (CPU; the weights excluded likewise), MiB; FLOPs: analytic, 2 per multiply-accumulate "
        "(nlsn_efficiency.py's docstring).",
        "",
        "| Method | " + " | ".join(f"{h}×{h} time (ms) | {h}×{h} mem (MiB) | {h}×{h} GFLOPs" for h in sides) + " |",
        "|---|" + "---:|" * (3 * len(sides)),
    ]
    for p in providers:
        cells = [_value(index.get((p, metric, h)), digits) for h in sides
                 for metric, digits in (("time_ms", 1), ("peak_mem_mb", 0), ("gflops", 0))]
        lines.append(f"| NLSN {p} (ours) | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The paper's: NLSN supplementary Table 3, one RTX 2070 (the scale and the memory definition are "
        "not stated; memory in MB as the paper gives it).",
        "",
        "| Method | " + " | ".join(f"{h}×{h} time (ms) | {h}×{h} mem (MB) | {h}×{h} GFLOPs" for h in sides) + " |",
        "|---|" + "---:|" * (3 * len(sides)),
    ]
    for name, paper in PAPER_TABLE3.items():
        cells = [f"{v:.0f}" if v is not None else "—" for h in sides for v in paper.get(h, (None,) * 3)]
        lines.append(f"| {name} (paper) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table2(folder: Path) -> Path:
    out = Path(folder) / "table.md"
    out.write_text(render_table2(read_csv(Path(folder) / "sweep.csv")))
    return out


def write_table3(csv_path: Path) -> Path:
    out = Path(csv_path).with_suffix(".md")
    out.write_text(render_table3(read_csv(csv_path), json.loads(Path(csv_path).with_suffix(".json").read_text())))
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python bench/table.py DIR  (DIR/sweep.csv -> table.md, DIR/nlsn_*.csv -> nlsn_*.md)",
              file=sys.stderr)
        return 2
    folder = Path(argv[0])
    written = [write_table2(folder)] if (folder / "sweep.csv").exists() else []
    written += [write_table3(p) for p in sorted(folder.glob("nlsn_*.csv")) if p.with_suffix(".json").exists()]
    for out in written:
        print(f"wrote {out}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
