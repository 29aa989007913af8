"""One command for a lent GPU (torch and triton preinstalled, no package registry): check
the Triton backend's numbers first, then time it, and keep everything in one archive.

    python bench/gpu_check.py OUT_DIR             # on the GPU: about 7 minutes at most
    python bench/gpu_check.py OUT_DIR --dry-run   # the same steps on the CPU, tiny shapes (CI)
    python bench/gpu_check.py --plan              # the kernel specialisations each step compiles

Steps, in order, each in its own process with its own time budget (a crash, a CUDA error
that poisons the context, or a step past its budget does not stop the next one):

1. prewarm: every Triton specialisation the later steps launch, recorded on the CPU
   (bench/kernel_launches.py) and compiled in parallel, one process per core, into the
   Triton cache the later steps read (compiling is what costs the time on a cold machine).
2. correctness: fp32, fp16, bf16, tf32; forward and backward of ``nlsa(backend="triton")``
   against the float64 reference on the same device, in the order the Triton hash chose;
   Table 2 (d 16, c 64) and NLSN (d 64, c 256) widths at L = 150² (neither a multiple of
   144 nor of 64), and L = 577 (padding 143) in fp32; N 2, R 4, chunk 144; every
   uninitialised allocation NaN-poisoned; a summary as soon as it ends.
3. ratios: Table 2 (150², R 4, c 64, N 1) of nlsa_triton against the torch backend, the
   reference and SDPA full attention, plain (do_bench median) and as a CUDA-graph replay
   (GPU time alone, no host).
4. profile: torch.profiler's GPU time by launch (each Triton launch in a range named
   after its kernel and its flags, so the exact non-finite launch shows), grouped (hash,
   sort, staging, attention forward, exact path, backward, fold, ...).
5. memory: peak allocated at 600² (fp32, c 64 and 256) and 2048² (bf16, c 64).
6. flex: bench/nlsa_flex.py (compiled FlexAttention) at Table 2, time and error.
7. pytest: the GPU-relevant test files until the step's budget is spent.

OUT_DIR receives four files: results.tar.gz (every step's JSON, logs, profiler table),
rewritten atomically after each step so that an early stop keeps what was done;
summary.md and summary.json (rewritten after each step); gpu_check.log.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT_FILES = ("results.tar.gz", "summary.md", "summary.json", "gpu_check.log")
VARIANTS = {"fp32": ("float32", False), "tf32": ("float32", True), "fp16": ("float16", False),
            "bf16": ("bfloat16", False)}
# ||a - b|| / ||b|| bounds against float64 (forward, gradients), from each precision's unit
# roundoff (fp32 2^-24, tf32 and fp16 2^-11, bf16 2^-8) with room for the softmax's sums over
# 4 x 432 candidates; the CPU interpreter measured fp32 <= 4e-7 and fp16 <= 3e-4 (tests/).
TOLERANCE = {"fp32": (1e-5, 1e-4), "tf32": (5e-3, 2e-2), "fp16": (2e-3, 6e-3), "bf16": (2e-2, 5e-2)}
HASH_MISMATCH_LIMIT = 1e-3  # codes that differ from float64's: near-ties only


@dataclasses.dataclass(frozen=True)
class Case:
    """One Triton problem: nlsa on (N, L, d) / (N, L, c) embeddings, R rounds."""

    label: str
    n: int
    length: int
    d: int
    c: int
    rounds: int
    chunk: int
    variants: tuple = ()  # the dtype variants checked at this case; () for all the plan's


@dataclasses.dataclass(frozen=True)
class Plan:
    """The sizes of every step, on the GPU or in the dry run."""

    device: str
    variants: tuple
    cases: tuple  # correctness
    table2: tuple  # (height, width, channels) of the ratios, profile and flex steps
    rounds: int
    chunk: int
    ratio_dtypes: tuple
    ratio_providers: tuple
    memory: tuple  # (height, width, channels, dtype)
    pytest_args: tuple
    budgets: dict  # step -> seconds


STEPS = ("prewarm", "correctness", "ratios", "profile", "memory", "flex", "pytest")
GPU_PLAN = Plan(
    device="cuda", variants=("fp32", "fp16", "bf16", "tf32"),
    # Each case and dtype compiles its own ~20 specialisations (sm_90, python bench/gpu_check.py
    # --plan): the padding-143 shape in fp32 alone.
    cases=(Case("Table 2", 2, 150 * 150, 16, 64, 4, 144), Case("NLSN", 2, 150 * 150, 64, 256, 4, 144),
           Case("Table 2, L 577", 2, 577, 16, 64, 4, 144, ("fp32",))),
    table2=(150, 150, 64), rounds=4, chunk=144, ratio_dtypes=("float32", "bfloat16"),
    ratio_providers=("nlsa_triton", "nlsa_torch", "nlsa_reference", "nla_sdpa"),
    memory=((600, 600, 64, "float32"), (600, 600, 256, "float32"), (2048, 2048, 64, "bfloat16")),
    # The files whose tests run compiled on a GPU, the cheapest specialisations first.
    pytest_args=("tests/test_determinism.py", "tests/test_robustness.py", "tests/test_torch_compile.py",
                 "tests/test_backward.py", "tests/test_forward.py", "tests/test_flex.py"),
    budgets={"prewarm": 75, "correctness": 80, "ratios": 55, "profile": 20, "memory": 35, "flex": 55,
             "pytest": 60},
)
# The CPU interpreter: fp32 and fp16 only (it mis-computes bf16 dots), tiny shapes.
DRY_PLAN = Plan(
    device="cpu", variants=("fp32", "fp16"),
    cases=(Case("Table 2", 2, 40, 16, 64, 2, 16), Case("NLSN", 1, 21, 64, 256, 2, 16)),
    table2=(8, 9, 64), rounds=2, chunk=16, ratio_dtypes=("float32",),
    ratio_providers=("nlsa_triton", "nlsa_torch", "nlsa_reference", "nla_sdpa"),
    memory=((8, 9, 64, "float32"),),
    pytest_args=("tests/test_forward.py::test_int32_perm_is_accepted",),
    # Backstops only (a loaded 2-core CI machine runs the whole dry run in about a minute).
    budgets={step: 120 for step in STEPS},
)
GPU_TOTAL_S = 400  # the whole command: 7 minutes with room for start-up and the archive
DRY_TOTAL_S = 600


# --------------------------------------------------------------------------- small helpers

def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64; NaN anywhere gives NaN."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def short_reason(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def fp32_precision(tf32: bool):
    """tf32 through torch's current precision setting (the legacy allow_tf32 flag on a
    torch without it); plain fp32 leaves torch's defaults alone."""
    import torch

    matmul = torch.backends.cuda.matmul
    if not tf32:
        yield "torch default"
        return
    if hasattr(matmul, "fp32_precision"):
        before, matmul.fp32_precision = matmul.fp32_precision, "tf32"
        try:
            yield "torch.backends.cuda.matmul.fp32_precision = 'tf32'"
        finally:
            matmul.fp32_precision = before
    else:
        before, matmul.allow_tf32 = matmul.allow_tf32, True
        try:
            yield "torch.backends.cuda.matmul.allow_tf32 = True"
        finally:
            matmul.allow_tf32 = before


@contextlib.contextmanager
def poisoned_allocations():
    """Every torch.empty / empty_like / empty_strided / new_empty in the block is filled with
    NaN (floats) or -1 (integers): an output element a kernel never writes, or a staging
    row it reads before writing, shows up as NaN or a wrong value."""
    import torch

    def poison(t):
        if t.is_floating_point():
            return t.fill_(float("nan"))
        return t.fill_(-1) if t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64) else t

    saved = {name: getattr(torch, name) for name in ("empty", "empty_like", "empty_strided")}
    new_empty = torch.Tensor.new_empty
    try:
        for name, allocate in saved.items():
            setattr(torch, name, lambda *a, _allocate=allocate, **k: poison(_allocate(*a, **k)))
        torch.Tensor.new_empty = lambda self, *a, **k: poison(new_empty(self, *a, **k))
        yield
    finally:
        for name, allocate in saved.items():
            setattr(torch, name, allocate)
        torch.Tensor.new_empty = new_empty


class CompileCounter:
    """Kernel specialisations the JIT compiles in this process (its in-memory misses) and
    how many of them the Triton cache on disk did not already hold (real compiles)."""

    def __init__(self):
        self.calls = 0
        self.seconds = 0.0
        self.before = self._entries()
        try:
            from triton.runtime.jit import JITFunction
        except ImportError:
            return
        original = getattr(JITFunction, "_do_compile", None)
        if original is None:
            return
        counter = self

        def counted(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                counter.calls += 1
                counter.seconds += time.perf_counter() - start

        JITFunction._do_compile = counted  # for the life of the step's process

    @staticmethod
    def _entries() -> set:
        cache = os.environ.get("TRITON_CACHE_DIR")
        return set(os.listdir(cache)) if cache and os.path.isdir(cache) else set()

    def report(self) -> dict:
        new = len(self._entries() - self.before)
        return {"jit_specialisations": self.calls, "jit_seconds": round(self.seconds, 1),
                "triton_cache_new_entries": new,
                "triton_cache_hits": max(self.calls - new, 0)}


# --------------------------------------------------------------------------- one step

class StepContext:
    """What a step function gets: the plan, its deadline, and a result saved after each item."""

    def __init__(self, name: str, work: Path, deadline: float, plan: Plan, dry: bool, counter=None):
        self.name, self.work, self.deadline, self.plan, self.dry = name, work, deadline, plan, dry
        self.counter = counter  # a CompileCounter: its counts go with every save
        self.result = {"step": name, "status": "running", "items": [], "notes": []}
        self.save()

    def remaining(self) -> float:
        return self.deadline - time.time()

    def out_of_time(self, reserve: float = 0.0) -> bool:
        return self.remaining() < reserve

    def add(self, item: dict) -> dict:
        self.result["items"].append(item)
        self.save()
        return item

    def note(self, text: str) -> None:
        self.result["notes"].append(text)
        self.save()

    def save(self) -> None:
        if self.counter is not None:
            self.result["compiles"] = self.counter.report()
        write_atomic(self.work / f"{self.name}.json", json.dumps(self.result, indent=1, default=str).encode())


def run_item(ctx: StepContext, base: dict, fn, reserve: float = 0.0) -> dict:
    """fn() -> dict of results, recorded with base; 'skipped' past the deadline, 'error' on
    an exception (the step goes on with its next item)."""
    if ctx.out_of_time(reserve):
        return ctx.add({**base, "status": "skipped", "reason": "step budget spent"})
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the step goes on
        result = {"status": "oom" if "out of memory" in str(exc).lower() else "error", "reason": short_reason(exc)}
    result.setdefault("status", "ok")
    print(f"[{ctx.name}] {base} -> {result}", flush=True)
    return ctx.add({**base, **result, "seconds": round(time.perf_counter() - start, 2)})


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device: str) -> dict:
    """Median (p20, p80) ms: do_bench's event timing on the GPU, perf_counter repeats on the CPU."""
    if device == "cuda":
        import harness

        median, p20, p80 = harness.cuda_time_ms(fn, harness.Timing())
        return {"median_ms": median, "p20_ms": p20, "p80_ms": p80}
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"median_ms": times[1], "p20_ms": times[0], "p80_ms": times[2]}


def graph_time_ms(fn) -> dict:
    """The call captured once in a CUDA graph, its replays timed: the GPU's time without
    the host's launch overhead."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    timed = time_ms(graph.replay, "cuda")
    del graph
    return {"graph_status": "ok", "graph_median_ms": timed["median_ms"], "graph_p20_ms": timed["p20_ms"],
            "graph_p80_ms": timed["p80_ms"]}


# --------------------------------------------------------------------------- the steps

def record_plan(plan: Plan, capability: int = 90) -> dict:
    """Per step, the distinct Triton specialisations (kernel, JIT key) its Triton calls
    launch, recorded on CPU tensors through the public API (nothing compiles or runs) with
    bench/kernel_launches.py; and the union's launches, to compile ahead. Needs a process
    where TRITON_INTERPRET is unset (real JITFunctions)."""
    import torch

    import kernel_launches
    import nlsa_triton as nt
    from nlsa_triton import functional

    calls = triton_calls(plan)
    per_step, union, failures = {}, {}, []
    # Recording runs the API on CPU tensors, which resolve_backend sends elsewhere.
    resolve, functional.resolve_backend = functional.resolve_backend, lambda *a, **k: "triton"
    try:
        for step, step_calls in calls.items():
            keys = {}
            for case, variant, train in step_calls:
                dtype = getattr(torch, VARIANTS[variant][0])
                gen = torch.Generator().manual_seed(0)
                x = torch.randn(case.n, case.length, case.d, generator=gen).to(dtype).requires_grad_(train)
                y = torch.randn(case.n, case.length, case.c, generator=gen).to(dtype).requires_grad_(train)
                rotations = nt.random_rotations(case.d, case.rounds, nt.num_buckets(case.length, case.chunk),
                                                generator=gen)
                with kernel_launches.recording(capability) as launches, fp32_precision(VARIANTS[variant][1]):
                    try:
                        with torch.set_grad_enabled(train):
                            out = nt.nlsa(x, y, n_hashes=case.rounds, chunk_size=case.chunk, rotations=rotations,
                                          backend="triton")
                        if train:
                            out.backward(torch.ones_like(out))
                    except Exception as exc:  # noqa: BLE001 - that call compiles when launched
                        failures.append(f"{step} {case.label} {variant}: {short_reason(exc, 200)}")
                for launch in launches:
                    keys.setdefault((launch.kernel_name, launch.key), launch)
            per_step[step] = f"{len(keys)} ({len(keys.keys() - union.keys())} new)"
            union = {**union, **keys}  # in the order the steps need them
    finally:
        functional.resolve_backend = resolve
    return {"per_step": per_step, "distinct": len(union), "launches": list(union.values()), "failures": failures}


def triton_calls(plan: Plan) -> dict:
    """step -> [(Case, variant, train)]: the Triton calls each step makes."""
    h, w, c = plan.table2
    table2 = Case("Table 2", 1, h * w, c // 4, c, plan.rounds, plan.chunk)
    variant = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
    return {
        "correctness": [(case, v, True) for v in plan.variants for case in plan.cases
                        if v in (case.variants or plan.variants)],
        "ratios": [(table2, variant[dt], train) for dt in plan.ratio_dtypes for train in (False, True)],
        "memory": [(Case(f"{mh}x{mw}", 1, mh * mw, mc // 4, mc, plan.rounds, plan.chunk), variant[dt], train)
                   for mh, mw, mc, dt in plan.memory for train in (False, True)],
    }


def _compile_one(spec: tuple) -> tuple:
    """Compile one recorded launch for its target into the Triton cache (a worker process)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name, signature, constexprs, attrs, options, capability = spec
    kernel = getattr(importlib.import_module(module), name)
    start = time.perf_counter()
    triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", capability, 32),
                   options=options)
    return name, time.perf_counter() - start


def step_prewarm(ctx: StepContext) -> None:
    import multiprocessing

    capability = 90
    if not ctx.dry:
        import torch

        major, minor = torch.cuda.get_device_capability()
        capability = major * 10 + minor
    recorded = record_plan(ctx.plan, capability=capability)
    ctx.result["per_step_specialisations"] = recorded["per_step"]
    ctx.result["distinct_specialisations"] = recorded["distinct"]
    for failure in recorded["failures"]:
        ctx.note(f"not recorded (compiles when launched): {failure}")
    ctx.note(f"sm_{capability}: {recorded['distinct']} distinct specialisations planned, per step "
             f"{recorded['per_step']} (pytest and flex not counted: they compile what their tests and "
             f"torch.compile ask for)")
    specs = [(launch.kernel.fn.__module__, launch.kernel_name, launch.signature, launch.constexprs, launch.attrs,
              dict(launch.compile_options.__dict__), capability) for launch in recorded["launches"]]
    if ctx.dry:  # the CPU compiles one (minutes for all): the worker path and the cache hit
        specs = specs[:1]
    workers = max(1, min(len(specs), os.cpu_count() or 2))
    done, seconds = 0, 0.0
    pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        pending = [pool.apply_async(_compile_one, (spec,)) for spec in specs]
        for job in pending:
            job.wait(max(ctx.remaining() - 5, 0))
            if not job.ready():
                ctx.note("step budget spent: the rest compile when first launched")
                break
            try:
                _, took = job.get()
                done += 1
                seconds += took
            except Exception as exc:  # noqa: BLE001 - that one compiles (and fails) when launched
                ctx.add({"status": "error", "reason": short_reason(exc)})
    finally:
        pool.terminate()
    ctx.result["compiled"] = done
    ctx.note(f"compiled {done} of {len(specs)} with {workers} processes ({seconds:.0f} s of compile time)")
    if done:
        ctx.add({"cache_check": specs[0][1], **_cache_hit(specs[0])})


def _cache_hit(spec: tuple) -> dict:
    """Compile a prewarmed specialisation again, as the JIT will at its first launch: it must
    come from the Triton cache (no new entry)."""
    cache = os.environ.get("TRITON_CACHE_DIR", "")
    before = set(os.listdir(cache)) if os.path.isdir(cache) else set()
    _, took = _compile_one(spec)
    new = set(os.listdir(cache)) - before if os.path.isdir(cache) else set()
    return {"status": "ok" if not new else "fail", "seconds_again": round(took, 3), "new_cache_entries": len(new)}


def step_correctness(ctx: StepContext) -> None:
    import torch

    import nlsa_triton as nt

    device = ctx.plan.device
    # Variant by variant: each dtype's compiles come together; tf32 (last in the plans) sets
    # torch's precision for its own calls only.
    for variant in ctx.plan.variants:
        for index, case in enumerate(ctx.plan.cases):
            if variant not in (case.variants or ctx.plan.variants):
                continue
            base = {"case": case.label, "n": case.n, "length": case.length, "d": case.d, "c": case.c,
                    "rounds": case.rounds, "chunk": case.chunk, "variant": variant}
            run_item(ctx, base, lambda: _check_case(nt, torch, device, case, variant, seed=index))


def _check_case(nt, torch, device, case: Case, variant: str, seed: int) -> dict:
    dtype_name, tf32 = VARIANTS[variant]
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator(device).manual_seed(seed)
    x = torch.randn(case.n, case.length, case.d, generator=gen, device=device).to(dtype)
    y = torch.randn(case.n, case.length, case.c, generator=gen, device=device).to(dtype)
    grad = torch.randn(case.n, case.length, case.c, generator=gen, device=device).to(dtype)
    rotations = nt.random_rotations(case.d, case.rounds, nt.num_buckets(case.length, case.chunk),
                                    generator=gen, device=device)
    xt, yt = x.clone().requires_grad_(), y.clone().requires_grad_()
    with fp32_precision(tf32) as precision, poisoned_allocations():
        codes = nt.lsh_hash(x, rotations, backend="triton")
        out = nt.nlsa(xt, yt, n_hashes=case.rounds, chunk_size=case.chunk, rotations=rotations, backend="triton")
        out.backward(grad)
    sync(device)
    # The float64 reference attends in the order the Triton hash chose (a near-tie may hash
    # differently in float64; that is the hash check's business, below).
    perm = nt.bucket_sort(codes)
    xd, yd = x.double().requires_grad_(), y.double().requires_grad_()
    expected = nt.chunked_attention(xd, yd, perm, case.chunk, backend="reference")
    expected.backward(grad.double())
    codes64 = nt.lsh_hash(x.double(), rotations.double(), backend="reference")
    errors = {"out": rel_err(out, expected), "dx": rel_err(xt.grad, xd.grad), "dy": rel_err(yt.grad, yd.grad)}
    finite = all(bool(torch.isfinite(t).all()) for t in (out, xt.grad, yt.grad))
    mismatch = float((codes != codes64).double().mean())
    fwd_tol, bwd_tol = TOLERANCE[variant]
    passed = (finite and errors["out"] < fwd_tol and errors["dx"] < bwd_tol and errors["dy"] < bwd_tol
              and mismatch <= HASH_MISMATCH_LIMIT)
    return {"status": "pass" if passed else "fail", "precision": precision, "err_out": errors["out"],
            "err_dx": errors["dx"], "err_dy": errors["dy"], "tol_fwd": fwd_tol, "tol_bwd": bwd_tol,
            "finite": finite, "hash_mismatch": mismatch}


def _config(provider, mode, h, w, c, rounds, chunk, dtype):
    from providers import HASHED
    from schema import Config

    hashed = provider in HASHED
    return Config(provider, mode, h, w, c, rounds if hashed else 0, chunk if hashed else 0, dtype)


def step_ratios(ctx: StepContext) -> None:
    import harness
    import providers

    plan, device = ctx.plan, ctx.plan.device
    h, w, c = plan.table2
    configs = [_config(provider, mode, h, w, c, plan.rounds, plan.chunk, dtype)
               for dtype in plan.ratio_dtypes for mode in ("fwd", "fwd_bwd") for provider in plan.ratio_providers]

    def built(cfg):
        fn = providers.build(cfg, device)
        fn()  # compiles, or fails before anything is timed
        sync(device)
        return fn

    def plain(cfg):
        try:
            fn = built(cfg)
        except harness.Skip as skip:
            return {"status": "skipped", "reason": str(skip)}
        result = time_ms(fn, device)
        del fn
        harness.free_cuda()
        return result

    for cfg in configs:
        base = {"provider": cfg.provider, "mode": cfg.mode, "dtype": cfg.dtype, "size": f"{h}x{w}", "channels": c,
                "rounds": plan.rounds}
        run_item(ctx, base, lambda cfg=cfg: plain(cfg))
    # The CUDA graphs after every plain time: a call that cannot be captured (a host
    # synchronisation inside it) must not cost the plain times that follow it.
    for cfg, item in zip(configs, list(ctx.result["items"])):
        if device != "cuda":
            item.update(graph_status="skipped", graph_reason="CUDA graphs need a GPU")
            continue
        if item["status"] != "ok" or ctx.out_of_time():
            item.update(graph_status="skipped", graph_reason=item.get("reason") or "step budget spent")
            continue
        try:
            item.update(graph_time_ms(built(cfg)))
        except Exception as exc:  # noqa: BLE001 - recorded; the next configuration is tried
            item.update(graph_status="error", graph_reason=short_reason(exc))
        harness.free_cuda()
        ctx.save()
    _add_ratios(ctx.result["items"])
    ctx.save()


def _add_ratios(items: list) -> None:
    """Each row's time over nlsa_triton's in the same dtype and mode (plain and graph); on
    the CPU, where the Triton backend is never timed, over nlsa_torch's."""
    times = {(i["provider"], i["mode"], i["dtype"]): i for i in items if i.get("status") == "ok"}
    for item in items:
        for base in ("nlsa_triton", "nlsa_torch"):
            ref = times.get((base, item.get("mode"), item.get("dtype")))
            if ref and item.get("status") == "ok":
                item["ratio_to"] = base
                item["ratio"] = item["median_ms"] / ref["median_ms"]
                if item.get("graph_status") == "ok" and ref.get("graph_status") == "ok":
                    item["graph_ratio"] = item["graph_median_ms"] / ref["graph_median_ms"]
                break


# Kernel (or CPU op) name -> part of the algorithm; the first pattern that matches wins.
PROFILE_GROUPS = (
    ("exact (non-finite) path", r"exact|nonfinite"),
    ("hash", r"hash"),
    ("sort", r"sort|radix|histogram|scan|count"),
    ("staging", r"stage|staging|gather|index"),
    ("attention backward", r"bwd|dq_|dkdv|backward"),
    ("attention forward", r"fwd|attend|forward"),
    ("fold / merge", r"fold|merge|combine|ring"),
    ("fill / copy / elementwise", r"fill|copy|memset|memcpy|elementwise|vectorized|cat|zero"),
    ("reduction", r"reduce|sum|norm"),
)


def profile_group(name: str) -> str:
    for group, pattern in PROFILE_GROUPS:
        if re.search(pattern, name, re.IGNORECASE):
            return group
    return "other"


TRITON_RANGE = "triton "


@contextlib.contextmanager
def labelled_launches():
    """Each Triton launch in the block runs inside a profiler range named after its kernel
    and the boolean flags it was launched with that are on (e.g. EXACT_NONFINITE): the
    profiler names a Triton kernel by its function alone, and the exact non-finite launch
    is a specialisation of the forward kernel."""
    import torch
    from triton.runtime.jit import JITFunction

    classes = [JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    except ImportError:
        pass
    originals = {cls: cls.run for cls in classes}

    def labelled(original):
        def run(self, *args, grid, warmup, **kwargs):
            flags = [name for name, value in kwargs.items() if value is True]
            with torch.profiler.record_function(" ".join([TRITON_RANGE + self.fn.__name__, *flags])):
                return original(self, *args, grid=grid, warmup=warmup, **kwargs)
        return run

    try:
        for cls, original in originals.items():
            cls.run = labelled(original)
        yield
    finally:
        for cls, original in originals.items():
            cls.run = original


def profile_rows(averages, calls: int, gpu: bool) -> list:
    """(name, ms per call, launches per call): each Triton launch kind (its range's time,
    the kernel included) and, on the GPU, every other kernel, copy and fill (the device's
    own events; a CPU op's "self" device time would count its kernels twice); on the CPU
    the aten ops, whose times overlap the ranges' (the interpreter: not a measurement)."""
    from torch.autograd import DeviceType

    def device_us(event, total: bool) -> float:
        value = getattr(event, "device_time_total" if total else "self_device_time_total", None)
        return value if value is not None else getattr(event, "cuda_time_total" if total else "self_cuda_time_total")

    ranges = [e for e in averages if e.key.startswith(TRITON_RANGE)]
    # Kernels correlate with the innermost CPU range at their launch; where that failed
    # (no device time in any range), the Triton kernels are counted by name instead.
    by_range = not gpu or sum(device_us(e, True) for e in ranges) > 0
    triton_kernels = {e.key[len(TRITON_RANGE):].split()[0] for e in ranges}
    rows = []
    for event in averages:
        if event.key.startswith(TRITON_RANGE):
            us = (device_us(event, True) if gpu else event.cpu_time_total) if by_range else 0
        elif gpu:
            on_device = getattr(event, "device_type", None) == DeviceType.CUDA
            us = device_us(event, False) if on_device and not (by_range and event.key in triton_kernels) else 0
        else:
            us = event.self_cpu_time_total if event.key.startswith("aten::") else 0
        if us > 0:
            rows.append((event.key, us / 1e3 / calls, event.count / calls))
    return sorted(rows, key=lambda row: -row[1])


def step_profile(ctx: StepContext) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    import nlsa_triton as nt

    plan, device = ctx.plan, ctx.plan.device
    h, w, c = plan.table2
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(1, h * w, c // 4, generator=gen, device=device).requires_grad_()
    y = torch.randn(1, h * w, c, generator=gen, device=device).requires_grad_()
    grad = torch.randn(1, h * w, c, generator=gen, device=device)
    rotations = nt.random_rotations(c // 4, plan.rounds, nt.num_buckets(h * w, plan.chunk), generator=gen,
                                    device=device)
    calls = 10 if device == "cuda" else 1
    gpu = device == "cuda"

    def step():
        x.grad = y.grad = None
        nt.nlsa(x, y, n_hashes=plan.rounds, chunk_size=plan.chunk, rotations=rotations,
                backend="triton").backward(grad)

    def measure():
        step()  # compiled (prewarm) and warm
        sync(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
        with profile(activities=activities) as prof, labelled_launches():
            for _ in range(calls):
                step()
            sync(device)
        averages = prof.key_averages()
        try:
            table = averages.table(sort_by="device_time_total" if gpu else "cpu_time_total", row_limit=50)
        except Exception:  # noqa: BLE001 - a torch that still names device time after CUDA
            table = averages.table(sort_by="cuda_time_total", row_limit=50)
        (ctx.work / "profile.txt").write_text(table)
        rows = profile_rows(averages, calls, gpu)
        groups = {}
        for name, ms, _ in rows:
            group = profile_group(name)
            groups[group] = groups.get(group, 0.0) + ms
        return {"what": f"nlsa triton forward+backward, {h}x{w}, c {c}, R {plan.rounds}, float32, {calls} calls",
                "time": "GPU time" if gpu else "CPU time in the interpreter (not a measurement)",
                "groups_ms_per_call": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
                "launches": [{"name": name, "group": profile_group(name), "ms_per_call": ms, "count_per_call": n}
                             for name, ms, n in rows[:30]]}

    run_item(ctx, {"profile": "nlsa_triton fwd_bwd"}, measure)


def step_memory(ctx: StepContext) -> None:
    import torch

    import harness
    import providers

    plan, device = ctx.plan, ctx.plan.device
    for h, w, c, dtype in plan.memory:
        for provider in ("nlsa_triton", "nlsa_torch"):
            for mode in ("fwd", "fwd_bwd"):
                cfg = _config(provider, mode, h, w, c, plan.rounds, plan.chunk, dtype)
                base = {"provider": provider, "mode": mode, "dtype": dtype, "size": f"{h}x{w}", "channels": c}

                def measure(cfg=cfg):
                    if device != "cuda":
                        return {"status": "skipped", "reason": "peak allocated is a CUDA allocator statistic"}
                    # y, its gradient and the output in float32 at least: skip what cannot fit.
                    need = 6 * cfg.pixels * cfg.channels * 4
                    free, _ = torch.cuda.mem_get_info()
                    if need > free:
                        return {"status": "skipped", "reason": f"needs about {need / 2**30:.1f} GiB, "
                                                               f"{free / 2**30:.1f} free"}
                    try:
                        fn = providers.build(cfg, device)
                    except harness.Skip as skip:
                        return {"status": "skipped", "reason": str(skip)}
                    fn()
                    sync(device)
                    peak = harness.cuda_peak_mb(fn)
                    # One call timed with events: the large maps' calls are long, and the
                    # budget is for memory.
                    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    begin.record()
                    fn()
                    end.record()
                    end.synchronize()
                    harness.free_cuda()
                    return {"peak_mem_mb": peak, "median_ms": begin.elapsed_time(end), "timed_calls": 1}

                run_item(ctx, base, measure)
                if ctx.result["items"][-1]["status"] not in ("ok", "skipped"):
                    harness.free_cuda()


def step_flex(ctx: StepContext) -> None:
    import torch

    import harness
    import nlsa_triton as nt

    plan, device = ctx.plan, ctx.plan.device
    h, w, c = plan.table2
    try:
        import providers
        from nlsa_flex import neighbour_chunks_mask, nlsa_flex
    except Exception as exc:  # noqa: BLE001 - a torch without flex_attention
        ctx.add({"status": "skipped", "reason": f"flex unavailable: {short_reason(exc)}"})
        return
    compiled = device == "cuda"

    def check():
        gen = torch.Generator(device).manual_seed(1)
        length = h * w
        x = torch.randn(1, length, c // 4, generator=gen, device=device)
        y = torch.randn(1, length, c, generator=gen, device=device)
        rotations = nt.random_rotations(c // 4, plan.rounds, nt.num_buckets(length, plan.chunk), generator=gen,
                                        device=device)
        mask = neighbour_chunks_mask(length, plan.chunk, device, compiled=compiled)
        out = nlsa_flex(x, y, rotations, plan.chunk, mask, compiled=compiled)
        # float64 in flex's own order (its hash is the reference's, in float32).
        perm = nt.bucket_sort(nt.reference.lsh_hash(x, rotations))
        expected = nt.chunked_attention(x.double(), y.double(), perm, plan.chunk, backend="reference")
        err = rel_err(out, expected)
        return {"status": "pass" if err < TOLERANCE["fp32"][0] else "fail", "err_out": err,
                "compiled": compiled}

    run_item(ctx, {"flex": "forward against float64 reference"}, check)
    for mode in ("fwd", "fwd_bwd"):
        for provider in ("nlsa_flex", "nlsa_triton"):
            cfg = _config(provider, mode, h, w, c, plan.rounds, plan.chunk, "float32")

            def measure(cfg=cfg):
                try:
                    fn = providers.build(cfg, device)
                except harness.Skip as skip:
                    return {"status": "skipped", "reason": str(skip)}
                start = time.perf_counter()
                fn()  # flex compiles here
                sync(device)
                first = time.perf_counter() - start
                return {"first_call_s": round(first, 2), **time_ms(fn, device)}

            run_item(ctx, {"provider": provider, "mode": mode, "dtype": "float32", "size": f"{h}x{w}"}, measure)
    _add_ratios([i for i in ctx.result["items"] if "provider" in i])
    ctx.save()


class DeadlinePlugin:
    """pytest plugin: tests that would start past the deadline are skipped, and every
    outcome is saved as it comes (a step killed at its budget keeps what it ran)."""

    def __init__(self, ctx: StepContext):
        self.ctx = ctx
        self.counts = {}

    def pytest_runtest_setup(self, item):
        import pytest

        if self.ctx.out_of_time(reserve=2):
            pytest.skip("gpu_check: the pytest step's budget is spent")

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            outcome = report.outcome
            if report.when != "call" and outcome == "failed":
                outcome = "error"
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
            self.ctx.result["counts"] = self.counts
            if outcome in ("failed", "error"):
                self.ctx.add({"test": report.nodeid, "status": outcome,
                              "reason": str(report.longrepr)[-600:]})
            else:
                self.ctx.save()


def step_pytest(ctx: StepContext) -> None:
    import pytest

    args = ["-q", "-p", "no:cacheprovider", "-o", "addopts=", "--junitxml", str(ctx.work / "pytest.xml"),
            "--rootdir", str(ROOT), *[str(ROOT / a) for a in ctx.plan.pytest_args]]
    plugin = DeadlinePlugin(ctx)
    os.chdir(ROOT)
    code = pytest.main(args, plugins=[plugin])
    ctx.result["exit_code"] = int(code)
    ctx.result["counts"] = plugin.counts
    ctx.note(f"pytest {' '.join(ctx.plan.pytest_args)}: {plugin.counts}, exit code {int(code)}")


STEP_FUNCTIONS = {"prewarm": step_prewarm, "correctness": step_correctness, "ratios": step_ratios,
                  "profile": step_profile, "memory": step_memory, "flex": step_flex, "pytest": step_pytest}


def step_status(result: dict) -> str:
    statuses = [i.get("status") for i in result.get("items", [])]
    if any(s in ("fail", "failed", "error", "oom") for s in statuses):
        return "failed"
    if statuses and all(s == "skipped" for s in statuses):
        return "skipped"
    return "ok"


def run_step(name: str, work: Path, deadline: float, dry: bool) -> int:
    """The body of a step's process."""
    sys.path.insert(0, str(BENCH))
    plan = DRY_PLAN if dry else GPU_PLAN
    ctx = StepContext(name, work, deadline, plan, dry, CompileCounter() if name != "prewarm" and not dry else None)
    try:
        STEP_FUNCTIONS[name](ctx)
        ctx.result["status"] = step_status(ctx.result)
    except Exception as exc:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        ctx.result["status"] = "error"
        ctx.result["reason"] = short_reason(exc)
    ctx.save()
    return 0


# --------------------------------------------------------------------------- the run

def environment(dry: bool) -> dict:
    import torch

    info = {"dry_run": dry, "python": sys.version.split()[0], "torch": torch.__version__}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if not dry and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["capability"] = "sm_%d%d" % torch.cuda.get_device_capability()
        props = torch.cuda.get_device_properties(0)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["multiprocessors"] = props.multi_processor_count
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = short_reason(exc)
    else:
        info["gpu"] = None
    try:
        info["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                                        capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    # A copy of the tree without its .git (as a lent machine gets it) is told its commit.
    info["commit"] = info["commit"] or os.environ.get("GPU_CHECK_COMMIT")
    return info


def _fmt(value, spec=".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else format(value, spec)
    return str(value)


def summary_markdown(env: dict, steps: list, total_s: float) -> str:
    lines = ["# GPU check" + (" (dry run: CPU, tiny shapes, Triton interpreter)" if env.get("dry_run") else ""),
             "", f"device: {env.get('gpu') or 'cpu'} {env.get('capability', '')}; torch {env.get('torch')}, "
                 f"triton {env.get('triton')}, python {env.get('python')}, commit {env.get('commit')}; "
                 f"{total_s:.0f} s in all", "",
             "| step | status | seconds (budget) | items ok / fail / skipped | JIT specialisations: cache hits, compiled |",
             "|---|---|---:|---|---|"]
    for s in steps:
        items = s.get("items", [])
        ok = sum(i.get("status") in ("ok", "pass", "passed") for i in items)
        bad = sum(i.get("status") in ("fail", "failed", "error", "oom") for i in items)
        skipped = sum(i.get("status") == "skipped" for i in items)
        comp = s.get("compiles") or {}
        compiles = (f"{comp['jit_specialisations']}: {comp['triton_cache_hits']} hits, "
                    f"{comp['triton_cache_new_entries']} compiled ({comp['jit_seconds']:.0f} s)") if comp else "-"
        if "counts" in s:
            ok, bad, skipped = (s["counts"].get("passed", 0), s["counts"].get("failed", 0)
                                + s["counts"].get("error", 0), s["counts"].get("skipped", 0))
        lines.append(f"| {s['step']} | {s.get('status')} | {s.get('seconds', 0):.0f} ({s.get('budget', 0):.0f}) | "
                     f"{ok} / {bad} / {skipped} | {compiles} |")
    by_name = {s["step"]: s for s in steps}
    for s in steps:
        for note in s.get("notes", []):
            lines.append(f"- {s['step']}: {note}")
        if s.get("reason"):
            lines.append(f"- {s['step']}: {s['reason']}")
    if "correctness" in by_name:
        lines += ["", "## Correctness: ||a-b||/||b|| against float64 (forward, dx, dy), NaN-poisoned allocations", "",
                  "| case | N | L | d | c | dtype | out | dx | dy | bounds | hash mismatch | finite | result |",
                  "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---|---|"]
        for i in by_name["correctness"].get("items", []):
            if "err_out" in i:
                lines.append(f"| {i['case']} | {i['n']} | {i['length']} | {i['d']} | {i['c']} | {i['variant']} | "
                             f"{_fmt(i['err_out'])} | {_fmt(i['err_dx'])} | {_fmt(i['err_dy'])} | "
                             f"{i['tol_fwd']:g} / {i['tol_bwd']:g} | {_fmt(i['hash_mismatch'])} | {i['finite']} | "
                             f"{i['status']} |")
            else:
                lines.append(f"| {i.get('case')} | {i.get('n')} | {i.get('length')} | {i.get('d')} | {i.get('c')} | "
                             f"{i.get('variant')} | | | | | | | {i.get('status')}: {i.get('reason', '')} |")
    for name, title in (("ratios", "Table 2 times (ms) and ratios to nlsa_triton: plain and CUDA-graph replay"),
                        ("flex", "FlexAttention at Table 2")):
        rows = [i for i in by_name.get(name, {}).get("items", []) if "provider" in i]
        if not rows:
            continue
        lines += ["", f"## {title}", "",
                  "| provider | mode | dtype | median ms | ratio | graph ms | graph ratio | notes |",
                  "|---|---|---|---:|---:|---:|---:|---|"]
        for i in rows:
            note = i.get("reason") or i.get("graph_reason") or ""
            lines.append(f"| {i['provider']} | {i['mode']} | {i['dtype']} | {_fmt(i.get('median_ms'), '.4g')} | "
                         f"{_fmt(i.get('ratio'))} | {_fmt(i.get('graph_median_ms'), '.4g')} | "
                         f"{_fmt(i.get('graph_ratio'))} | {i['status']} {note[:120]} |")
    for i in by_name.get("profile", {}).get("items", []):
        if "groups_ms_per_call" in i:
            lines += ["", f"## Where the time goes: {i['what']} ({i['time']}, ms per call)", ""]
            lines += [f"- {group}: {ms:.4g}" for group, ms in i["groups_ms_per_call"].items()]
    rows = [i for i in by_name.get("memory", {}).get("items", []) if "provider" in i]
    if rows:
        lines += ["", "## Memory: peak allocated beyond the inputs (MiB), time of one call (ms)", "",
                  "| provider | mode | size | c | dtype | peak MiB | median ms | status |", "|---|---|---|---:|---|---:|---:|---|"]
        for i in rows:
            lines.append(f"| {i['provider']} | {i['mode']} | {i['size']} | {i['channels']} | {i['dtype']} | "
                         f"{_fmt(i.get('peak_mem_mb'), '.4g')} | {_fmt(i.get('median_ms'), '.4g')} | "
                         f"{i['status']} {i.get('reason', '')[:100]} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, work: Path, env: dict, steps: list, started: float) -> None:
    """The archive of the work folder, the summaries: each replaced atomically."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(work.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                tar.add(path, arcname=f"results/{path.name}")
    write_atomic(out / "results.tar.gz", buffer.getvalue())
    total = time.time() - started
    write_atomic(out / "summary.json", json.dumps({"environment": env, "seconds": round(total, 1), "steps": steps},
                                                  indent=1, default=str).encode())
    write_atomic(out / "summary.md", summary_markdown(env, steps, total).encode())


def run_process(command: list, budget: float, log, env: dict) -> tuple[int, bool]:
    """(exit code, timed out): the command's whole process group (the prewarm's compile
    workers, a hung compile) is killed at the budget."""
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
                            start_new_session=True)
    try:
        return proc.wait(timeout=budget), False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        return proc.wait(), True


def run_all(out: Path, dry: bool, total_s: float, only: tuple) -> int:
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    log = open(out / "gpu_check.log", "a", buffering=1)
    plan = DRY_PLAN if dry else GPU_PLAN
    # One Triton cache for the prewarm's workers and every step's process, kept after the
    # run (a rerun of some steps on the same machine finds its kernels).
    cache = os.environ.get("TRITON_CACHE_DIR") or str(Path(tempfile.gettempdir()) / "gpu_check_triton_cache")
    env_vars = {**os.environ, "TRITON_CACHE_DIR": cache, "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(BENCH), os.environ.get("PYTHONPATH")]))}

    def say(text: str) -> None:
        line = f"[gpu_check {time.time() - started:5.0f} s] {text}"
        print(line, flush=True)
        log.write(line + "\n")

    import torch

    if not dry and not torch.cuda.is_available():
        say("no CUDA device: run with --dry-run on a machine without a GPU")
        return 2
    env = environment(dry)
    (work / "environment.json").write_text(json.dumps(env, indent=1))
    say(f"{env.get('gpu') or 'cpu (dry run)'}, torch {env['torch']}, triton {env['triton']}, "
        f"commit {env.get('commit')}; TRITON_CACHE_DIR={cache}; work folder {work}")
    steps = []
    for name in STEPS:
        if only and name not in only:
            continue
        left = total_s - (time.time() - started)
        budget = min(plan.budgets[name], left - 5)
        if budget < 5:
            steps.append({"step": name, "status": "skipped", "reason": "the run's time is spent", "budget": 0,
                          "seconds": 0})
            write_outputs(out, work, env, steps, started)
            say(f"{name}: skipped, the run's time is spent")
            continue
        step_env = dict(env_vars)
        if dry and name != "prewarm":
            step_env["TRITON_INTERPRET"] = "1"
        else:  # the prewarm records real JITFunctions; on the GPU nothing is interpreted
            step_env.pop("TRITON_INTERPRET", None)
        say(f"{name}: budget {budget:.0f} s")
        start = time.time()
        command = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--work", str(work),
                   "--deadline", f"{start + budget - 3:.1f}"] + (["--dry-run"] if dry else [])
        rc, timed_out = run_process(command, budget, log, step_env)
        seconds = time.time() - start
        try:
            result = json.loads((work / f"{name}.json").read_text())
        except (OSError, ValueError):
            result = {"step": name, "items": []}
        if timed_out:
            result["status"] = "timeout"
            result["reason"] = f"killed at its {budget:.0f} s budget; items recorded until then are kept"
        elif rc != 0 or result.get("status") == "running":
            result["status"] = "error"
            result.setdefault("reason", f"the step's process exited with code {rc}")
        result.update(seconds=round(seconds, 1), budget=round(budget, 1))
        steps.append(result)
        write_outputs(out, work, env, steps, started)
        say(f"{name}: {result['status']} in {seconds:.0f} s{' (' + result['reason'] + ')' if result.get('reason') else ''}")
    log.close()
    shutil.rmtree(work, ignore_errors=True)
    print((out / "summary.md").read_text())
    return 0 if all(s.get("status") in ("ok", "skipped") for s in steps) else 1


def print_plan(dry: bool) -> int:
    plan = DRY_PLAN if dry else GPU_PLAN
    recorded = record_plan(plan)
    for failure in recorded["failures"]:
        print("not recorded:", failure)
    print(f"distinct Triton specialisations (sm_90): {recorded['distinct']}; per step (new: not launched by an earlier step): "
          f"{recorded['per_step']}")
    return 0


def ensure_package_importable() -> None:
    """A checkout that travels without its git-ignored ``nlsa_triton/kernels`` link (the
    package maps ``kernels/`` there when installed) gets the link back, so the worktree's
    package imports without a pip install (no package registry on a lent machine)."""
    link = ROOT / "nlsa_triton" / "kernels"
    if not link.exists() and not link.is_symlink() and (ROOT / "kernels").is_dir():
        link.symlink_to(Path("..") / "kernels")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", nargs="?", help="output folder (results.tar.gz, summary.md, summary.json, gpu_check.log)")
    p.add_argument("--dry-run", action="store_true", help="on the CPU: tiny shapes, the kernels interpreted")
    p.add_argument("--total", type=float, help=f"seconds for the whole run (GPU {GPU_TOTAL_S}, dry run {DRY_TOTAL_S})")
    p.add_argument("--steps", default="", help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--plan", action="store_true", help="print the Triton specialisations each step launches")
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    ensure_package_importable()
    sys.path[:0] = [str(ROOT), str(BENCH)]  # this worktree's package and bench modules
    if args.step:
        return run_step(args.step, Path(args.work), args.deadline, args.dry_run)
    if args.plan:
        return print_plan(args.dry_run)
    if not args.out:
        p.error("OUT_DIR is required")
    only = tuple(s for s in args.steps.split(",") if s)
    unknown = set(only) - set(STEPS)
    if unknown:
        p.error(f"unknown steps {sorted(unknown)}; choose from {','.join(STEPS)}")
    total = args.total or (DRY_TOTAL_S if args.dry_run else GPU_TOTAL_S)
    return run_all(Path(args.out), args.dry_run, total, only)


if __name__ == "__main__":
    sys.exit(main())
