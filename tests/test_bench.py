"""The benchmarks (bench/): a tiny --quick sweep end to end, nlsn_efficiency on a tiny network,
plus the parts a CPU run cannot reach (the GPU path's status handling, the speed-up plot with
Triton rows)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import providers  # noqa: E402
import schema  # noqa: E402
import sweep  # noqa: E402
from schema import Config, Measurement  # noqa: E402

HAS_GPU = torch.cuda.is_available()
PLOTS = ("time_vs_pixels", "memory_vs_pixels", "speedup", "time_vs_n_hashes")


def _raw_rows(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [dict(zip(header, r)) for r in reader]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("bench")
    assert sweep.main(["--quick", "--out", str(out)]) == 0
    return out


def test_quick_run_csv(quick_run):
    header, rows = _raw_rows(quick_run / "sweep.csv")
    assert tuple(header) == schema.CSV_COLUMNS
    assert rows
    assert {r["status"] for r in rows} <= set(schema.STATUSES)
    assert {r["metric"] for r in rows} == set(schema.METRICS)
    assert {r["provider"] for r in rows} == set(providers.PROVIDERS)

    configs = {}
    for r in rows:
        key = tuple(r[k] for k in schema.CSV_COLUMNS if k not in ("metric", "status", "median", "p20", "p80",
                                                                  "timestamp"))
        configs.setdefault(key, []).append(r["metric"])
    assert all(sorted(m) == sorted(schema.METRICS) for m in configs.values()), "one row per metric per config"

    for r in rows:
        hashed = r["provider"] in providers.HASHED
        assert (r["n_hashes"] != "0") == hashed and (r["chunk_size"] != "0") == hashed
        assert r["batch"] == "1" and r["torch"] == torch.__version__ and r["timestamp"]
        if r["status"] == "ok":
            assert float(r["median"]) >= 0
            if r["metric"] == "time_ms":
                assert float(r["p20"]) <= float(r["median"]) <= float(r["p80"])
        else:
            assert r["median"] == r["p20"] == r["p80"] == ""

    for provider in ("nla_torch", "nla_sdpa", "nlsa_torch", "nlsa_reference", "criss_cross"):
        assert {r["status"] for r in rows if r["provider"] == provider} == {"ok"}, provider
    triton_rows = [r for r in rows if r["provider"] == "nlsa_triton"]
    if not HAS_GPU:
        assert {r["status"] for r in triton_rows} == {"skipped"}
        assert {r["device"].rsplit("/", 1)[1] for r in rows} == {" 1 torch threads"}  # the CPU default
    else:
        assert {r["status"] for r in triton_rows if r["mode"] == "fwd"} == {"ok"}


def test_quick_run_outputs(quick_run):
    for name in PLOTS:
        png = quick_run / f"{name}_float32.png"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    table = (quick_run / "table.md").read_text()
    for label in ("NLA", "NLSA-r1", "NLSA-r2", "NLSA-r4", "NLSA-r8", "9.6", "3738", "16.8", "1074"):
        assert label in table
    n_configs = sum(1 for _ in open(quick_run / "sweep.csv")) // 2
    log = (quick_run / "sweep.log").read_text().splitlines()
    assert sum(1 for line in log if line.startswith("[")) == n_configs  # one progress line each
    if not HAS_GPU:
        assert "Triton kernels need CUDA" in "\n".join(log)


def test_cpu_oom_is_recorded(tmp_path):
    """An allocation far beyond the machine's memory fails at once (overcommit heuristic)."""
    policy = Path("/proc/sys/vm/overcommit_memory")
    if not policy.exists() or policy.read_text().strip() != "0":
        pytest.skip("needs Linux's heuristic overcommit, so that a huge allocation fails at once")
    args = sweep.parse_args(["--device", "cpu", "--sizes", "600", "--providers", "nla_torch", "--modes", "fwd",
                             "--channels", "64", "--dtype", "fp32"])
    counts = sweep.run_sweep(args, tmp_path, lambda line: None, schema.meta("cpu", 1))
    assert counts == {"oom": 2}


def test_cpu_thinning_applies_to_the_default_grid_only():
    def configs(*argv):
        return sweep.plan(sweep.parse_args(["--device", "cpu", *argv]))

    default = configs()
    assert len(default) == 152  # 32 per NLSA provider (4 of them), 8 per other provider (3)
    assert not any(c.height == 150 and c.mode == "fwd_bwd" for c in default)
    chosen = configs("--channels", "64,256")  # the default channels, but chosen: the whole grid runs
    assert len(chosen) > len(default)
    assert any(c.height == 150 and c.mode == "fwd_bwd" and c.channels == 256 for c in chosen)


def _done(cfg, pixels, ms):
    return [(Config(cfg.provider, cfg.mode, pixels, 1, cfg.channels, cfg.n_hashes, cfg.chunk_size, cfg.dtype),
             Measurement({"time_ms": schema.Metric("ok", ms), "peak_mem_mb": schema.Metric("ok", 1.0)}))]


def test_predicted_time_skips_hopeless_sizes():
    cfg = Config("nla_torch", "fwd", 200, 200, 64, 0, 0, "float32")
    assert sweep.predicted_ms(cfg, _done(cfg, 100 * 100, 10.0)) == pytest.approx(160.0)  # L^2: 4x pixels, 16x
    nlsa = Config("nlsa_torch", "fwd", 200, 200, 64, 4, 144, "float32")
    assert sweep.predicted_ms(nlsa, _done(nlsa, 100 * 100, 10.0)) == pytest.approx(40.0)
    assert sweep.predicted_ms(nlsa, []) is None
    assert sweep.predicted_ms(nlsa, _done(cfg, 100 * 100, 10.0)) is None  # another series


@pytest.fixture
def fake_cuda(monkeypatch):
    """The GPU path of harness.Runner on CPU: timing, memory and synchronisation faked."""
    monkeypatch.setattr(harness, "free_cuda", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(harness, "cuda_peak_mb", lambda fn: (fn(), 12.5)[1])


@pytest.mark.parametrize(
    "behaviour, expected",
    [
        ("ok", ("ok", "ok")),
        ("oom_first_call", ("oom", "oom")),
        ("oom_in_setup", ("oom", "oom")),
        ("no_backward", ("skipped", "skipped")),
        ("oom_in_do_bench", ("oom", "ok")),
        ("other_error", ("error", "error")),
    ],
)
def test_gpu_runner_statuses(monkeypatch, fake_cuda, behaviour, expected):
    def fn():
        if behaviour == "oom_first_call":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 275.00 GiB")
        if behaviour == "no_backward":
            raise NotImplementedError("the Triton backward is not implemented yet")
        if behaviour == "other_error":
            raise ValueError("bad shape")

    def setup(cfg):
        if behaviour == "oom_in_setup":
            raise RuntimeError("CUDA error: out of memory")
        return fn

    def fake_time(fn, timing):
        if behaviour == "oom_in_do_bench":
            raise RuntimeError("CUDA error: out of memory")
        fn()
        return 1.0, 0.9, 1.1

    monkeypatch.setattr(harness, "cuda_time_ms", fake_time)
    cfg = Config("nlsa_triton", "fwd_bwd", 32, 32, 64, 2, 144, "float32")
    result = harness.Runner("cuda").run(setup, cfg)
    assert list(result.metrics) == ["time_ms", "peak_mem_mb"]
    assert (result.metrics["time_ms"].status, result.metrics["peak_mem_mb"].status) == expected
    if expected == ("ok", "ok"):
        assert result.metrics["time_ms"].median == 1.0 and result.metrics["peak_mem_mb"].median == 12.5
        assert (result.metrics["time_ms"].p20, result.metrics["time_ms"].p80) == (0.9, 1.1)
    else:
        assert result.reason


def test_gpu_runner_stops_after_a_sticky_cuda_error(fake_cuda):
    def fn():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    runner = harness.Runner("cuda")
    cfg = Config("nlsa_triton", "fwd", 32, 32, 64, 2, 144, "float32")
    assert runner.run(lambda cfg: fn, cfg).metrics["time_ms"].status == "error"
    again = runner.run(lambda cfg: (lambda: None), cfg)
    assert again.metrics["time_ms"].status == "error" and "broken" in again.reason


def _killed(cfg):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does


def _hangs(cfg):
    import time

    time.sleep(60)


def test_cpu_child_killed_or_hung():
    """A child killed by SIGKILL is 'oom' (the OOM killer), one past its time limit 'error'."""
    cfg = Config("nla_torch", "fwd", 8, 8, 64, 0, 0, "float32")
    killed = harness.Runner("cpu").run(_killed, cfg)
    assert killed.metrics["time_ms"].status == "oom" and "SIGKILL" in killed.reason
    hung = harness.Runner("cpu", timeout_s=3).run(_hangs, cfg)
    assert hung.metrics["peak_mem_mb"].status == "error" and "timed out" in hung.reason


def test_nlsn_efficiency_tiny(tmp_path):
    import nlsn_efficiency
    import table

    assert nlsn_efficiency.main(["--device", "cpu", "--n-feats", "16", "--n-resblocks", "2", "--sizes", "24",
                                 "--out", str(tmp_path)]) == 0
    stem = tmp_path / "nlsn_x2_f16_r2"
    header, rows = _raw_rows(stem.with_suffix(".csv"))
    assert tuple(header) == schema.CSV_COLUMNS
    assert [(r["provider"], r["metric"], r["status"]) for r in rows] == [
        (p, m, "skipped" if p == "nlsn_triton" and m != "gflops" else "ok")
        for p in nlsn_efficiency.PROVIDERS for m in ("time_ms", "peak_mem_mb", "gflops")]
    md = stem.with_suffix(".md").read_text()
    assert "| NLSN (paper) | — | — | — |" in md  # 24x24: no paper numbers
    assert "| NLSN nlsn_torch (ours) |" in md and md == table.render_table3(
        schema.read_csv(stem.with_suffix(".csv")), __import__("json").loads(stem.with_suffix(".json").read_text()))


def test_speedup_plot_with_triton_rows(quick_run, tmp_path):
    """A CPU run has no nlsa_triton measurements; fake some to draw the real speed-up plot."""
    header, rows = _raw_rows(quick_run / "sweep.csv")
    fake = [dict(r, provider="nlsa_triton", median="0.5", p20="0.4", p80="0.6", status="ok")
            for r in rows if r["provider"] == "nlsa_torch" and r["status"] == "ok"]
    with open(tmp_path / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows([r for r in rows if r["provider"] != "nlsa_triton"] + fake)
    import plots

    written, notes = plots.draw(tmp_path)
    assert not notes and {p.name for p in written} == {f"{n}_float32.png" for n in PLOTS}


def test_table_prefers_triton_rows():
    import table

    def row(provider, r, metric, side, median):
        return dict(provider=provider, mode="fwd", metric=metric, height=side, width=side, batch=1, channels=64,
                    n_hashes=r, chunk_size=144 if r else 0, dtype="float32", status="ok", median=median,
                    p20=None, p80=None, device="gpu", torch="t", triton="3", commit="c", timestamp="now")

    rows = [row("nla_torch", 0, "time_ms", 100, 7.0), row("nla_torch", 0, "peak_mem_mb", 100, 700.0)]
    for r in (1, 2, 4, 8):
        rows += [row("nlsa_triton", r, "time_ms", 100, 0.1 * r), row("nlsa_torch", r, "time_ms", 100, r)]
    text = table.render_table2(rows)
    # Ours (ms, MiB) first, then the paper's RTX 2070 figures (ms, MB) in columns of their own.
    assert ("| Method | provider (ours) | 100×100 time (ms) | 100×100 mem (MiB) | 150×150 time (ms) | "
            "150×150 mem (MiB) | paper 100×100 time (ms) | paper 100×100 mem (MB) | paper 150×150 time (ms) | "
            "paper 150×150 mem (MB) |") in text
    assert "| NLA | nla_torch | 7.00 | 700.0 | — | — | 9.6 | 730 | 47.3 | 3738 |" in text
    assert "| NLSA-r4 | nlsa_triton | 0.40 | — | — | — | 2.4 | 231 | 10.3 | 521 |" in text
    assert "| NLSA-r4 | nlsa_torch | 4.00 | — | — | — |" in text  # under the other providers, ours only
    assert " / " not in text.split("| Method")[1]  # no cell mixes ours and the paper's


def test_committed_table_is_what_the_committed_csv_gives():
    """bench/results/cpu/table.md is table.py's rendering of the committed sweep.csv."""
    import table

    folder = BENCH / "results" / "cpu"
    assert (folder / "table.md").read_text() == table.render_table2(schema.read_csv(folder / "sweep.csv"))


TINY = ["--device", "cpu", "--sizes", "8", "--providers", "nlsa_torch", "--modes", "fwd", "--channels", "8",
        "--n-hashes", "1", "--no-plots"]


def _git(repo, *args):
    import subprocess

    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_default_run_writes_a_new_folder_and_stamps_the_commit_truthfully(tmp_path, monkeypatch, capsys):
    """In a clean git checkout whose committed results hold a sweep.log: a plain run writes a
    new folder; --replace-committed rewrites the committed one, and the commit is read before
    (no -dirty from the run's own sweep.log); a tree dirty before the run is stamped -dirty.
    "wrote N files" counts what it lists, and each exists."""
    repo = tmp_path / "repo"
    committed = repo / "bench" / "results" / "cpu"
    committed.mkdir(parents=True)
    (committed / "sweep.log").write_text("the committed log\n")
    _git(tmp_path, "init", "-q", str(repo))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "results")
    head = _git(repo, "rev-parse", "--short=12", "HEAD")
    monkeypatch.setattr(schema, "BENCH_DIR", repo / "bench")

    def run(*extra):
        assert sweep.main([*TINY, *extra]) == 0
        lines = capsys.readouterr().out.splitlines()
        wrote = next(line for line in lines if line.startswith("# wrote "))
        n, folder = int(wrote.split()[2]), Path(wrote.split(" into ")[1].split(":")[0])
        names = wrote.split(": ", 1)[1].split(", ")
        assert len(names) == n and all((folder / name).is_file() for name in names), wrote
        assert {r["commit"] for r in schema.read_csv(folder / "sweep.csv")} == {lines[0].split("commit ")[1]}
        return folder, lines[0].split("commit ")[1]

    folder, commit = run()
    assert folder.parent == repo / "bench" / "results" and folder.name.startswith("cpu-") and commit == head
    assert (committed / "sweep.log").read_text() == "the committed log\n"
    folder, commit = run("--replace-committed")
    assert folder == committed and commit == head  # clean before the run: no -dirty
    assert _git(repo, "status", "--porcelain", "-uno")  # the run did change the committed files
    folder, commit = run("--replace-committed")
    assert commit == head + "-dirty"  # now the tree was dirty before the run
    with pytest.raises(SystemExit):
        sweep.parse_args(["--out", str(tmp_path), "--replace-committed"])
