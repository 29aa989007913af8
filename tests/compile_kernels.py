"""Compile every kernel for a CUDA target without a GPU; print one JSON line per compile.

Run with TRITON_INTERPRET unset (the interpreter replaces kernels by Python functions):
    python tests/compile_kernels.py 90
Each line: kernel, configuration, whether the launcher picks it by default, registers,
spills, or the compile error. tests/test_compile.py runs this and judges the lines.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")

from nlsa_triton.kernels.compile_targets import compile_targets  # noqa: E402

POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16",
                 torch.float64: "*fp64", torch.int64: "*i64", torch.int32: "*i32"}


def signature_of(kernel, args: dict):
    """Map each argument to a Triton type: a torch dtype names a pointer, an int is i32
    (i64 when marked), anything else is a constexpr value."""
    signature, constexprs = {}, {}
    for name in kernel.arg_names:
        value = args[name]
        if isinstance(value, torch.dtype):
            signature[name] = POINTER_TYPES[value]
        elif value == "i32" or value == "i64":
            signature[name] = value
        else:
            signature[name] = "constexpr"
            constexprs[name] = value
    return signature, constexprs


def resource_usage(cubin: bytes) -> dict:
    """Registers and spill memory (STACK/LOCAL bytes) read from the cubin, no driver needed."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True,
                              text=True, check=True).stdout
    usage = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", text))
    return {"n_regs": int(usage["REG"]), "spill_bytes": int(usage.get("STACK", 0)) + int(usage.get("LOCAL", 0))}


def main(capability: int) -> None:
    target = GPUTarget("cuda", capability, 32)
    for kernel, label, args, options, is_default in compile_targets():
        signature, constexprs = signature_of(kernel, args)
        record = {"kernel": kernel.__name__, "config": label, "default": is_default, "sm": capability}
        try:
            compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=target, options=options)
            record.update(resource_usage(compiled.asm["cubin"]))
        except Exception as error:  # reported, and failed on, by the test
            record["error"] = f"{type(error).__name__}: {error}"[:2000]
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
