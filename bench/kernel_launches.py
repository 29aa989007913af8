"""Record every Triton launch the package makes for a problem, as the JIT would compile it.

No GPU and no hand-kept lists: the package's ops (``nlsa_triton._ops``: hash, forward,
backward) run on CPU tensors with TRITON_INTERPRET unset, and every ``kernel[grid](...)``
goes through triton's own ``JITFunction.run`` up to the point where it would compile. A
stand-in driver names the GPU target; triton's binder then specialises the arguments
exactly as for a real launch (pointers aligned to 16 bytes and ints divisible by 16 get
the divisibility hint, ints equal to 1 become constants), ``_pack_args`` parses the
options for that target, and the cache key is the one the JIT keys its compiled kernels
by. The compile step (``JITFunction._do_compile``) is replaced by a recorder that returns
no kernel, so ``run`` returns before launching and nothing executes. Outputs of the
skipped kernels are uninitialised memory, which the launchers' torch ops between launches
(casts, staging buffers) do not mind.

CPU and CUDA allocators both align tensors to at least 16 bytes, so the pointer hints a
CPU tensor gets are the ones the same tensor gets on the GPU.

The kernels must be real ``JITFunction`` objects: import ``nlsa_triton`` in a process
without TRITON_INTERPRET=1 (the interpreter replaces them when they are defined).
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import inspect
import math
import pkgutil
import textwrap
from collections.abc import Iterator
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime import driver
from triton.runtime.jit import JITFunction

import nlsa_triton as nt
from nlsa_triton import _ops
from nlsa_triton.kernels.tile_tables import as_card, family

# The dtype variants a problem runs in: input dtype and whether fp32 matmuls may use TF32.
VARIANTS = {
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "fp16": (torch.float16, False),
    "bf16": (torch.bfloat16, False),
}

# The benchmark settings (chunk 144, R 4, a 150 x 150 image): Table 2 of the NLSN paper
# (d 16 / c 64) and the NLSN network's attention (d 64 / c 256).
SETTINGS = {"Table 2": {"d": 16, "c": 64}, "NLSN": {"d": 64, "c": 256}}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One call of hash, forward and backward: shapes, dtype variant and where it comes from."""

    setting: str  # e.g. "Table 2" or "chunk=16 d=8 c=24"
    n: int
    length: int
    d: int
    c: int
    rounds: int
    chunk_size: int
    variant: str  # a key of VARIANTS
    default: bool  # a configuration the benchmark settings use (must not spill)

    @property
    def label(self) -> str:
        return f"{self.setting} {self.variant} (N={self.n} L={self.length} d={self.d} c={self.c} " \
               f"R={self.rounds} chunk={self.chunk_size})"


@dataclasses.dataclass
class Launch:
    """One ``kernel[grid](...)`` call and what the JIT would compile for it."""

    kernel: JITFunction
    grid: tuple
    arguments: dict[str, str]  # argument name -> short description (tensor dtype/shape/stride, or value)
    launch_options: dict[str, Any]  # keyword options the launcher passed (num_warps, num_stages, ...)
    signature: dict[str, str]
    constexprs: dict
    attrs: dict
    compile_options: Any  # the backend's parsed options (CUDAOptions) for the target
    key: str  # the JIT's cache key: equal keys compile to the same binary
    capability: int  # the target, sm_<capability>
    problem: Problem | None = None

    @property
    def kernel_name(self) -> str:
        return self.kernel.__name__

    @property
    def programs(self) -> int:
        return math.prod(self.grid)

    @property
    def constexpr_values(self) -> dict[str, Any]:
        """Constexpr arguments by name, the JIT's integer-1 constants included."""
        return {self.kernel.arg_names[path[0]]: value for path, value in self.constexprs.items()}

    @property
    def configuration(self) -> tuple:
        """What the launcher chose, apart from the JIT's integer hints: the kernel, its
        pointer types, its declared constexpr arguments and the launch options."""
        declared = {p.name for p in self.kernel.params if p.is_constexpr}
        return (self.kernel_name,
                tuple((name, kind) for name, kind in self.signature.items() if kind.startswith(("*", "tensordesc"))),
                tuple((name, value) for name, value in self.constexpr_values.items() if name in declared),
                tuple(sorted(self.launch_options.items())))

    def describe_configuration(self) -> str:
        """The configuration in one line: pointer element types, then constexprs and options."""
        _, pointers, constexprs, options = self.configuration
        element_types = ",".join(dict.fromkeys(kind.lstrip("*") for _, kind in pointers))
        return " ".join([f"[{element_types}]", *(f"{name}={value}" for name, value in (*constexprs, *options))])


def defined_kernels() -> list:
    """Every @triton.jit function of ``nlsa_triton.kernels`` that is launched rather than
    called: those no other @triton.jit function of the package calls (found in their source)."""
    jitted = {}
    for module_info in pkgutil.iter_modules(nt.kernels.__path__):
        module = importlib.import_module(f"{nt.kernels.__name__}.{module_info.name}")
        for name, obj in vars(module).items():
            if hasattr(obj, "fn") and hasattr(obj, "arg_names") and obj.fn.__module__ == module.__name__:
                jitted[name] = obj
    called = set()
    for obj in jitted.values():
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(obj.fn)))):
            if isinstance(node, ast.Call):
                called.add(node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None))
    return [obj for name, obj in jitted.items() if name not in called]


class _TargetDriver:
    """Stands in for the CUDA driver: names the target and a device; launches nothing.

    The device id is the capability, so kernels' per-device binder caches never mix targets.
    """

    def __init__(self, target: GPUTarget):
        self.target = target

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return self.target.arch

    def get_current_stream(self, device: int) -> int:
        return 0


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')}{tuple(value.shape)} stride {value.stride()}"
    return repr(value)


@contextlib.contextmanager
def recording(capability: int = 90) -> Iterator[list[Launch]]:
    """Within the block, Triton launches are recorded into the yielded list, not run, with
    the tiles the launchers choose on sm_<capability>."""
    if not all(isinstance(kernel, JITFunction) for kernel in defined_kernels()):
        raise RuntimeError("the kernels are interpreted (TRITON_INTERPRET=1 was set when nlsa_triton was "
                           "imported); record launches in a process without it")
    target = GPUTarget("cuda", capability, 32)
    launches: list[Launch] = []
    pending: dict[str, Any] = {}
    original_run, original_compile = JITFunction.run, JITFunction._do_compile

    def run(self, *args, grid, warmup, **kwargs):
        pending.update(grid=grid, args=args, kwargs=dict(kwargs))
        try:
            return original_run(self, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            pending.clear()

    def record_instead_of_compiling(self, key, signature, device, constexprs, options, attrs, warmup):
        bound = self.signature.bind(*pending["args"], **{k: v for k, v in pending["kwargs"].items()
                                                         if k in self.signature.parameters})
        bound.apply_defaults()
        grid = pending["grid"]
        launches.append(Launch(
            kernel=self,
            grid=tuple(grid(bound.arguments) if callable(grid) else grid),
            arguments={name: _describe(value) for name, value in bound.arguments.items()},
            launch_options={k: v for k, v in pending["kwargs"].items() if k not in self.signature.parameters},
            signature=dict(signature), constexprs=dict(constexprs), attrs=dict(attrs),
            compile_options=options, key=key, capability=capability,
        ))
        # Returning no kernel makes JITFunction.run return before it launches.

    # Read without triggering driver creation, which fails where there is no GPU.
    previous_driver = driver._active
    driver.set_active(_TargetDriver(target))
    JITFunction.run, JITFunction._do_compile = run, record_instead_of_compiling
    try:
        with as_card(family(divmod(capability, 10))):
            yield launches
    finally:
        JITFunction.run, JITFunction._do_compile = original_run, original_compile
        driver.set_active(previous_driver)


@contextlib.contextmanager
def _tf32(enabled: bool):
    """fp32 matmuls in TF32 or not, through torch's fp32_precision where it has one (the
    legacy allow_tf32 cannot be read once that was set)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        before = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if enabled else "ieee"
    else:
        before = matmul.allow_tf32
        matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        if hasattr(matmul, "fp32_precision"):
            matmul.fp32_precision = before
        else:
            matmul.allow_tf32 = before


def setting_problems(setting: str, variants=tuple(VARIANTS)) -> list[Problem]:
    shape = SETTINGS[setting]
    return [Problem(setting, 1, 150 * 150, shape["d"], shape["c"], 4, 144, variant, default=True)
            for variant in variants]


# The widths users have (issue 16): d up to 128, c up to 512, every power of two on the way,
# at chunk 144 (the largest row tiles).
WIDTHS_D = (16, 32, 64, 128)
WIDTHS_C = (16, 32, 64, 128, 256, 512)
# 468 = 3 chunks of 144 + 36: the benchmark's L = 150 * 150 modulo 144, so the lengths, ring
# rows and strides divisible by 16 are the benchmark's, and the JIT specialises the kernels
# as for it, at 1/48 of the recording time.
WIDTH_LENGTH = 468


def width_problems(variants=("fp32", "tf32", "fp16")) -> list[Problem]:
    """One problem per (d, c) of WIDTHS_D x WIDTHS_C in each variant (chunk 144, R 4), and
    bf16 at the widest (d, c): it launches fp16's tiles, with the same operand sizes."""
    return [Problem(f"d={d} c={c}", 1, WIDTH_LENGTH, d, c, 4, 144, variant, default=False)
            for variant in variants for d in WIDTHS_D for c in WIDTHS_C] + [
        Problem(f"d={max(WIDTHS_D)} c={max(WIDTHS_C)}", 1, WIDTH_LENGTH, max(WIDTHS_D), max(WIDTHS_C), 4, 144,
                "bf16", default=False)]


def problem_inputs(problem: Problem, seed: int = 0):
    """x, y, perm (valid permutations), rotations and grad_out of ``problem``, on the CPU."""
    dtype, _ = VARIANTS[problem.variant]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(problem.n, problem.length, problem.d, generator=gen).to(dtype)
    y = torch.randn(problem.n, problem.length, problem.c, generator=gen).to(dtype)
    perm = torch.stack([torch.stack([torch.randperm(problem.length, generator=gen)
                                     for _ in range(problem.rounds)]) for _ in range(problem.n)])
    n_buckets = nt.num_buckets(problem.length, problem.chunk_size)
    rotations = nt.random_rotations(problem.d, problem.rounds, n_buckets, generator=gen)
    grad_out = torch.randn(problem.n, problem.length, problem.c, generator=gen).to(dtype)
    return x, y, perm, rotations, grad_out


def run_problem(problem: Problem, seed: int = 0) -> None:
    """Hash, forward and backward through the package's ops, as a training step calls them:
    half-precision inputs keep the fp32 output for the backward (``_ops._setup_context``)."""
    x, y, perm, rotations, grad_out = problem_inputs(problem, seed)
    _, tf32 = VARIANTS[problem.variant]
    with _tf32(tf32):
        _ops.lsh_hash(x, rotations)
        _ops.lsh_sort(x, rotations)
        out, lse, out_fp32 = _ops.chunked_attention_fwd_op(x, y, perm, problem.chunk_size, "none", True)
        saved_out = out_fp32 if out_fp32.numel() else out
        _ops.chunked_attention_bwd_op(grad_out, x, y, perm, saved_out, lse, problem.chunk_size)


def record(problems, capability: int = 90) -> list[Launch]:
    """Every launch of every problem, in order, each tagged with its problem."""
    launches = []
    for problem in problems:
        with recording(capability) as recorded:
            run_problem(problem)
        for launch in recorded:
            launch.problem = problem
        launches += recorded
    return launches


def distinct(launches: list[Launch]) -> dict[tuple[str, str], list[Launch]]:
    """Launches grouped by (kernel, JIT cache key): each group compiles to one binary."""
    groups: dict[tuple[str, str], list[Launch]] = {}
    for launch in launches:
        groups.setdefault((launch.kernel_name, launch.key), []).append(launch)
    return groups


def by_configuration(launches: list[Launch]) -> dict[tuple, tuple[Launch, list[Launch]]]:
    """Per configuration, in launch order: its representative, the specialisation whose
    launches run the most programs (the one that dominates the run time), and one launch
    of each of its distinct specialisations."""
    groups: dict[tuple, dict[str, list[Launch]]] = {}
    for launch in launches:
        groups.setdefault(launch.configuration, {}).setdefault(launch.key, []).append(launch)
    return {configuration: (max(by_key.values(), key=lambda same: sum(launch.programs for launch in same))[0],
                            [same[0] for same in by_key.values()])
            for configuration, by_key in groups.items()}


def compile_launch(launch: Launch):
    """The CompiledKernel the launch builds on its target (the non-async path of
    ``JITFunction._do_compile``)."""
    source = ASTSource(launch.kernel, launch.signature, launch.constexprs, launch.attrs)
    return triton.compile(source, target=GPUTarget("cuda", launch.capability, 32),
                          options=launch.compile_options.__dict__)
