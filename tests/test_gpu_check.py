"""bench/gpu_check.py: its dry run (every step on the CPU, tiny shapes, the kernels in the
interpreter) leaves at most 8 files, an archive of every step and a summary; a step past
its budget is killed and the run goes on."""
from __future__ import annotations

import ast
import json
import os
import subprocess
from types import SimpleNamespace
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), str(out), "--dry-run"],
                          capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    return out, proc


def test_dry_run_files(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:] + (out / "gpu_check.log").read_text()[-4000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8  # what a lent machine returns
    assert files == sorted(gpu_check.OUT_FILES)
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
        steps = {s: json.load(tar.extractfile(f"results/{s}.json")) for s in gpu_check.STEPS}
    assert {"results/environment.json", "results/profile.txt", "results/pytest.xml"} <= names
    assert all(steps[s]["status"] != "running" for s in gpu_check.STEPS)


def test_dry_run_summary(dry_run):
    out, _ = dry_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["dry_run"] is True
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == list(gpu_check.STEPS)
    assert {s: steps[s]["status"] for s in steps} == {
        "prewarm": "ok", "correctness": "ok", "ratios": "ok", "profile": "ok",
        "memory": "skipped",  # peak allocated is a CUDA statistic
        "flex": "ok", "pytest": "ok"}

    # Every case in every interpreter dtype, forward and both gradients within bounds.
    cases = steps["correctness"]["items"]
    assert {(c["case"], c["variant"]) for c in cases} == {
        (case.label, v) for case in gpu_check.DRY_PLAN.cases for v in gpu_check.DRY_PLAN.variants}
    for c in cases:
        assert c["status"] == "pass" and c["finite"]
        assert max(c["err_out"], c["err_dx"], c["err_dy"]) < gpu_check.TOLERANCE[c["variant"]][1]

    assert int(steps["prewarm"]["distinct_specialisations"]) > 0
    timed = {(i["provider"], i["mode"]): i for i in steps["ratios"]["items"]}
    assert timed[("nlsa_triton", "fwd")]["status"] == "skipped"  # the interpreter is never timed
    for provider in ("nlsa_torch", "nlsa_reference", "nla_sdpa"):
        for mode in ("fwd", "fwd_bwd"):
            row = timed[(provider, mode)]
            assert row["status"] == "ok" and row["median_ms"] > 0 and row["ratio_to"] == "nlsa_torch"
            assert row["graph_status"] == "skipped"
    profile = steps["profile"]["items"][0]
    assert profile["status"] == "ok" and sum(profile["groups_ms_per_call"].values()) > 0
    assert any(row["name"].startswith(gpu_check.TRITON_RANGE) for row in profile["launches"])
    flex = [i for i in steps["flex"]["items"] if "err_out" in i]
    assert flex and flex[0]["status"] == "pass"
    assert steps["pytest"]["counts"] == {"passed": 1}

    text = (out / "summary.md").read_text()
    for heading in ("| step | status", "## Correctness", "## Table 2 times", "## Where the time goes", "## Memory"):
        assert heading in text


def test_a_step_past_its_budget_is_killed(tmp_path):
    start = time.monotonic()
    with open(tmp_path / "log", "w") as log:
        rc, timed_out = gpu_check.run_process([sys.executable, "-c", "import time; time.sleep(60)"], 1, log, {})
    assert timed_out and rc != 0 and time.monotonic() - start < 30


def test_items_past_the_deadline_are_skipped_and_errors_recorded(tmp_path):
    ctx = gpu_check.StepContext("ratios", tmp_path, time.time() + 60, gpu_check.DRY_PLAN, dry=True)
    gpu_check.run_item(ctx, {"n": 1}, lambda: {"value": 1})
    gpu_check.run_item(ctx, {"n": 2}, lambda: 1 / 0)
    ctx.deadline = time.time() - 1
    gpu_check.run_item(ctx, {"n": 3}, lambda: {"value": 3})
    saved = json.loads((tmp_path / "ratios.json").read_text())["items"]
    assert [(i["n"], i["status"]) for i in saved] == [(1, "ok"), (2, "error"), (3, "skipped")]
    assert "ZeroDivisionError" in saved[1]["reason"]
    assert gpu_check.step_status({"items": saved}) == "failed"


@pytest.mark.parametrize("name, group", [
    ("_lsh_hash_kernel", "hash"), ("_stage_round_kernel", "staging"),
    ("_chunked_attention_fwd_kernel", "attention forward"), ("_chunked_attention_bwd_dq_kernel", "attention backward"),
    ("_fold_ring_grads_kernel", "fold / merge"),
    ("void at::native::(anonymous namespace)::radixSortKVInPlace<...>", "sort"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "fill / copy / elementwise"),
])
def test_profile_groups(name, group):
    assert gpu_check.profile_group(name) == group


def _event(key, device_type, total=0.0, self_time=0.0, count=2):
    return SimpleNamespace(key=key, device_type=device_type, device_time_total=total,
                           self_device_time_total=self_time, cpu_time_total=0.0, self_cpu_time_total=0.0,
                           count=count)


def test_profile_rows_on_the_gpu_count_each_kernel_once():
    """Triton launches through their ranges (the kernel event itself not again), other
    kernels through the device's events, never a CPU op's "self" device time."""
    from torch.autograd import DeviceType

    cpu, cuda = DeviceType.CPU, DeviceType.CUDA
    events = [_event("triton _fwd_kernel EXACT_NONFINITE", cpu, total=300.0),
              _event("_fwd_kernel", cuda, self_time=300.0),
              _event("aten::sort", cpu, total=50.0, self_time=50.0),
              _event("void radixSortKernel", cuda, self_time=50.0)]
    rows = gpu_check.profile_rows(events, calls=2, gpu=True)
    assert rows == [("triton _fwd_kernel EXACT_NONFINITE", 0.15, 1.0), ("void radixSortKernel", 0.025, 1.0)]
    # Kernels not correlated with the ranges (no device time there): counted by name.
    events[0].device_time_total = 0.0
    rows = gpu_check.profile_rows(events, calls=2, gpu=True)
    assert rows == [("_fwd_kernel", 0.15, 1.0), ("void radixSortKernel", 0.025, 1.0)]


JIT_PATH_SCRIPT = """
import os, sys
sys.path[:0] = [{root!r}, {bench!r}]
import torch, gpu_check, kernel_launches
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
import nlsa_triton as nt
from nlsa_triton import _ops

plan = gpu_check.dataclasses.replace(gpu_check.DRY_PLAN, variants=("fp32",), memory=(), ratio_dtypes=())
launch = next(l for l in gpu_check.record_plan(plan)["launches"] if l.kernel_name == "_lsh_hash_kernel")
gpu_check._compile_one((launch.kernel.fn.__module__, launch.kernel_name, launch.signature, launch.constexprs,
                        launch.attrs, dict(launch.compile_options.__dict__), 90))
counter = gpu_check.CompileCounter()
driver.set_active(kernel_launches._TargetDriver(GPUTarget("cuda", 90, 32)))
case = plan.cases[0]
gen = torch.Generator().manual_seed(0)
x = torch.randn(case.n, case.length, case.d, generator=gen)
rotations = nt.random_rotations(case.d, case.rounds, nt.num_buckets(case.length, case.chunk), generator=gen)
try:
    _ops.lsh_sort(x, rotations)  # the JIT compiles (here: finds) the hash kernel, then cannot launch it
except AttributeError:
    pass
print("REPORT", counter.report())
"""


def test_prewarmed_kernels_are_cache_hits_through_the_jit(tmp_path):
    """What the prewarm compiles is what the JIT's own path (run -> _do_compile -> compile)
    finds in the cache, and the step's counter says so: one specialisation, a hit."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    script = JIT_PATH_SCRIPT.format(root=str(ROOT), bench=str(ROOT / "bench"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    report = [line for line in proc.stdout.splitlines() if line.startswith("REPORT")]
    assert report, proc.stdout[-2000:] + proc.stderr[-3000:]
    counts = ast.literal_eval(report[0][len("REPORT "):])
    assert counts["jit_specialisations"] == 1 and counts["triton_cache_hits"] == 1
    assert counts["triton_cache_new_entries"] == 0
