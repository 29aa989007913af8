"""The benchmark sweep (bench/): a tiny --quick run end to end, plus the parts a CPU run
cannot reach (the GPU runner's status handling, the speed-up plot with Triton rows)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import providers  # noqa: E402
import sweep  # noqa: E402

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
    assert tuple(header) == common.CSV_COLUMNS
    assert rows
    assert {r["status"] for r in rows} <= set(common.STATUSES)
    assert {r["metric"] for r in rows} == set(common.METRICS)
    assert {r["provider"] for r in rows} == set(providers.PROVIDERS)

    configs = {}
    for r in rows:
        key = tuple(r[k] for k in common.CSV_COLUMNS if k not in ("metric", "status", "median", "p20", "p80",
                                                                  "timestamp"))
        configs.setdefault(key, []).append(r["metric"])
    assert all(sorted(m) == sorted(common.METRICS) for m in configs.values()), "one row per metric per config"

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
    settings = sweep.make_settings(args)
    counts = sweep.run_sweep(settings, tmp_path, lambda line: None)
    assert counts == {"oom": 2}


def test_cpu_thinning_applies_to_the_default_grid_only():
    def configs(*argv):
        return sweep.plan(sweep.make_settings(sweep.parse_args(["--device", "cpu", *argv])))

    default = configs()
    assert len(default) == 152  # 32 per NLSA provider (4 of them), 8 per other provider (3)
    assert not any(c.height == 150 and c.mode == "fwd_bwd" for c in default)
    chosen = configs("--channels", "64,256")  # the default channels, but chosen: the whole grid runs
    assert len(chosen) > len(default)
    assert any(c.height == 150 and c.mode == "fwd_bwd" and c.channels == 256 for c in chosen)


def test_predicted_time_skips_hopeless_sizes():
    cfg = providers.Config("nla_torch", "fwd", 200, 200, 64, 0, 0, "float32")
    last_ok = {cfg.series(): (100 * 100, 10.0)}
    assert sweep._predicted_ms(cfg, last_ok) == pytest.approx(160.0)  # L^2: 4x pixels, 16x time
    nlsa = providers.Config("nlsa_torch", "fwd", 200, 200, 64, 4, 144, "float32")
    assert sweep._predicted_ms(nlsa, {nlsa.series(): (100 * 100, 10.0)}) == pytest.approx(40.0)
    assert sweep._predicted_ms(nlsa, {}) is None


class _FakeCase:
    def __init__(self, fn):
        self.fn = fn

    def clear_grads(self):
        pass


@pytest.mark.parametrize(
    "behaviour, expected",
    [
        ("ok", ("ok", "ok")),
        ("oom_first_call", ("oom", "oom")),
        ("no_backward", ("skipped", "skipped")),
        ("oom_in_do_bench", ("oom", "ok")),
        ("other_error", ("error", "error")),
    ],
)
def test_gpu_runner_statuses(monkeypatch, behaviour, expected):
    """GpuRunner's handling, on CPU: build, timing and memory replaced by fakes."""
    calls = []

    def fn():
        calls.append(1)
        if behaviour == "oom_first_call":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 275.00 GiB")
        if behaviour == "no_backward":
            raise NotImplementedError("the Triton backward is not implemented yet")
        if behaviour == "other_error":
            raise ValueError("bad shape")

    def fake_time(fn, **kw):
        if behaviour == "oom_in_do_bench":
            raise RuntimeError("CUDA error: out of memory")
        fn()
        return 1.0, 0.9, 1.1

    monkeypatch.setattr(sweep, "build", lambda cfg, device, seed=0: _FakeCase(fn))
    monkeypatch.setattr(sweep, "gpu_peak_mb", lambda fn: (fn(), 12.5)[1])
    monkeypatch.setattr(sweep, "gpu_time_ms", fake_time)
    monkeypatch.setattr(sweep, "free_cuda", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    settings = sweep.make_settings(sweep.parse_args(["--quick", "--device", "cpu"]))
    cfg = providers.Config("nlsa_triton", "fwd_bwd", 32, 32, 64, 2, 144, "float32")
    result = sweep.GpuRunner(settings).run(cfg)
    assert (result["time"]["status"], result["mem"]["status"]) == expected
    if expected == ("ok", "ok"):
        assert result["time"]["median"] == 1.0 and result["mem"]["median"] == 12.5


def test_gpu_runner_stops_after_a_sticky_cuda_error(monkeypatch):
    def fn():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(sweep, "build", lambda cfg, device, seed=0: _FakeCase(fn))
    monkeypatch.setattr(sweep, "free_cuda", lambda *a, **k: None)
    runner = sweep.GpuRunner(sweep.make_settings(sweep.parse_args(["--quick", "--device", "cpu"])))
    cfg = providers.Config("nlsa_triton", "fwd", 32, 32, 64, 2, 144, "float32")
    assert runner.run(cfg)["time"]["status"] == "error"
    again = runner.run(cfg)
    assert again["time"]["status"] == "error" and "broken" in again["reason"]


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
    text = table.render(rows)
    assert "| NLA | nla_torch | 7.00 / 9.6 | 700.0 / 730 | — / 47.3 | — / 3738 |" in text
    assert "| NLSA-r4 | nlsa_triton | 0.40 / 2.4 | — / 231 |" in text
    assert "| NLSA-r4 | nlsa_torch | 4.00 | — |" in text  # under the other providers
