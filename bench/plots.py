"""Plots of a sweep, drawn from its CSV alone (matplotlib, Agg backend, PNG).

Usage: python bench/plots.py DIR   (reads DIR/sweep.csv, writes DIR/*.png)

One file per dtype in the CSV, each with a panel per (mode, channels):
- time_vs_pixels_<dtype>.png:   median time (p20-p80 band) vs H*W, log-log, per provider;
- memory_vs_pixels_<dtype>.png: peak memory vs H*W, log-log, per provider;
- speedup_<dtype>.png:          time of each other provider / time of the fastest NLSA path
                                measured, nlsa_triton (GPU) or else nlsa_torch (CPU), at the
                                same size (the NLSA providers at the same n_hashes); without
                                either, the figure holds a note saying so instead;
- time_vs_n_hashes_<dtype>.png: time vs n_hashes for the NLSA providers, a line per size.
The hashed providers appear in the first three at one n_hashes (4, NLSN's default, when
measured, else the largest measured); only rows with status ok are drawn.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from providers import HASHED, PROVIDERS  # noqa: E402
from schema import read_csv  # noqa: E402

COLORS = {"nlsa_triton": "tab:red", "nlsa_flex": "tab:purple", "nlsa_torch": "tab:orange",
          "nlsa_reference": "tab:brown", "nla_torch": "tab:blue", "nla_sdpa": "tab:cyan",
          "criss_cross": "tab:green"}
# The speed-up plot's baseline: the first of these with measurements.
SPEEDUP_BASES = ("nlsa_triton", "nlsa_torch")
PREFERRED_HASHES = 4


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(rows, metric):
    return [r for r in rows if r["metric"] == metric and r["status"] == "ok" and r["median"] is not None]


def _reference_hashes(rows) -> int | None:
    present = sorted({r["n_hashes"] for r in rows if r["provider"] in HASHED and r["n_hashes"]})
    if not present:
        return None
    return PREFERRED_HASHES if PREFERRED_HASHES in present else present[-1]


def _series(rows, provider, mode, channels, n_hashes):
    """{pixels: row} of one plotted line: one provider, mode and channels (and, for the
    hashed providers, n_hashes), sorted by H * W."""
    return dict(sorted((r["height"] * r["width"], r) for r in rows
                       if (r["provider"], r["mode"], r["channels"]) == (provider, mode, channels)
                       and (provider not in HASHED or r["n_hashes"] == n_hashes)))


def _line_label(provider, n_hashes):
    return f"{provider} (R={n_hashes})" if provider in HASHED else provider


def _grid(plt, rows, dtype, title, path, written, panel, xlabel, ylabel, empty="no ok measurements",
          legend=dict(fontsize=7)):
    """A figure with a panel per (mode, channels) of this dtype's rows; panel(ax, mode, ch)
    draws one, the axes' common styling is done here."""
    rows = [r for r in rows if r["dtype"] == dtype]
    modes = [m for m in ("fwd", "fwd_bwd") if any(r["mode"] == m for r in rows)]
    modes += sorted({r["mode"] for r in rows} - set(modes))
    channels = sorted({r["channels"] for r in rows})
    fig, axes = plt.subplots(len(modes), len(channels), figsize=(5.2 * len(channels), 4.0 * len(modes)),
                             squeeze=False)
    fig.suptitle(title, fontsize=11)
    for i, mode in enumerate(modes):
        for j, ch in enumerate(channels):
            ax = axes[i][j]
            ax.set_xscale("log")
            panel(ax, mode, ch)
            ax.set_yscale("log")
            ax.set_title(f"{mode}, channels {ch}", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(**legend)
            else:
                ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    written.append(path)
    plt.close(fig)


def _versus_pixels(plt, rows, dtype, metric, ylabel, path, written):
    data = [r for r in _ok(rows, metric) if r["dtype"] == dtype]
    ref = _reference_hashes(data)

    def panel(ax, mode, ch):
        for provider in PROVIDERS:
            s = _series(data, provider, mode, ch, ref)
            if not s:
                continue
            x = list(s)
            ax.plot(x, [s[p]["median"] for p in x], "o-", color=COLORS[provider], label=_line_label(provider, ref),
                    ms=4)
            if metric == "time_ms" and all(s[p]["p20"] is not None for p in x):
                ax.fill_between(x, [s[p]["p20"] for p in x], [s[p]["p80"] for p in x], color=COLORS[provider],
                                alpha=0.2, lw=0)

    what = "time" if metric == "time_ms" else "peak memory"
    _grid(plt, rows, dtype, f"{what} vs pixels, {dtype}" + (f" (NLSA providers at n_hashes={ref})" if ref else ""),
          path, written, panel, "pixels (H x W)", ylabel)


def _speedup(plt, rows, dtype, path, written, notes):
    data = [r for r in _ok(rows, "time_ms") if r["dtype"] == dtype]
    base_name = next((p for p in SPEEDUP_BASES if any(r["provider"] == p for r in data)), None)
    if base_name is None:
        notes.append(f"speedup_{dtype}.png: no nlsa_triton or nlsa_torch measurements with status ok for "
                     f"{dtype}, so there is no speed-up to draw")
        fig, ax = plt.subplots(figsize=(7, 2.5))
        ax.axis("off")
        ax.text(0.5, 0.5, f"Speed-up of NLSA, {dtype}:\nno nlsa_triton or nlsa_torch measurements in this sweep",
                ha="center", va="center", fontsize=11)
        fig.savefig(path, dpi=110)
        written.append(path)
        plt.close(fig)
        return
    ref = _reference_hashes([r for r in data if r["provider"] == base_name])

    def panel(ax, mode, ch):
        base = _series(data, base_name, mode, ch, ref)
        for provider in PROVIDERS:
            other = _series(data, provider, mode, ch, ref)
            x = [p for p in base if p in other]
            if provider != base_name and x:
                ax.plot(x, [other[p]["median"] / base[p]["median"] for p in x], "o-", color=COLORS[provider],
                        label=_line_label(provider, ref), ms=4)
        ax.axhline(1.0, color="k", lw=0.8, ls=":")

    _grid(plt, rows, dtype, f"speed-up of {base_name} (R={ref}) over each provider, {dtype} (>1: {base_name} "
          "faster)", path, written, panel, "pixels (H x W)", f"time(provider) / time({base_name})",
          empty="nothing to compare")


def _versus_hashes(plt, rows, dtype, path, written):
    data = [r for r in _ok(rows, "time_ms") if r["dtype"] == dtype and r["provider"] in HASHED]
    sizes = sorted({(r["height"], r["width"]) for r in data}, key=lambda hw: hw[0] * hw[1])
    hashes = sorted({r["n_hashes"] for r in data})
    cmap = plt.get_cmap("viridis")

    def panel(ax, mode, ch):
        for k, (h, w) in enumerate(sizes):
            for provider, style in (("nlsa_triton", "o-"), ("nlsa_flex", "^:"), ("nlsa_torch", "s--"),
                                    ("nlsa_reference", "x-.")):
                pts = sorted((r["n_hashes"], r["median"]) for r in data
                             if (r["provider"], r["mode"], r["channels"], r["height"], r["width"])
                             == (provider, mode, ch, h, w))
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=cmap(k / max(1, len(sizes) - 1)),
                            ms=4, label=f"{provider} {h}x{w}")
        ax.set_xscale("log", base=2)
        if hashes:
            ax.set_xticks(hashes, [str(h) for h in hashes])
            ax.set_xticks([], minor=True)

    _grid(plt, rows, dtype, f"time vs n_hashes (NLSA providers), {dtype}", path, written, panel, "n_hashes",
          "time (ms)", legend=dict(fontsize=6, ncol=2))


def draw(out_dir: Path) -> tuple[list[Path], list[str]]:
    """Draw every plot of DIR/sweep.csv into DIR. Returns (files written, notes)."""
    out_dir = Path(out_dir)
    rows = read_csv(out_dir / "sweep.csv")
    plt = _plt()
    written, notes = [], []
    dtypes = [d for d in ("float32", "float16", "bfloat16") if any(r["dtype"] == d for r in rows)]
    dtypes += sorted({r["dtype"] for r in rows} - set(dtypes))
    for dtype in dtypes:
        _versus_pixels(plt, rows, dtype, "time_ms", "time (ms)", out_dir / f"time_vs_pixels_{dtype}.png", written)
        _versus_pixels(plt, rows, dtype, "peak_mem_mb", "peak memory (MiB)",
                       out_dir / f"memory_vs_pixels_{dtype}.png", written)
        _speedup(plt, rows, dtype, out_dir / f"speedup_{dtype}.png", written, notes)
        _versus_hashes(plt, rows, dtype, out_dir / f"time_vs_n_hashes_{dtype}.png", written)
    return written, notes


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python bench/plots.py DIR  (reads DIR/sweep.csv, writes DIR/*.png)", file=sys.stderr)
        return 2
    written, notes = draw(Path(argv[0]))
    for note in notes:
        print(f"note: {note}")
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
