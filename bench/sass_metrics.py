"""What a compiled kernel's SASS says about its inner loop, read from the cubin with no GPU.

``cuobjdump -sass`` (shipped with triton) lists one instruction per line with its
address. Loops are the ranges [target, branch] of backward branches. The main loop is
the loop that does the most matrix work, counted in multiply-accumulates (MACs) per
issued warp instruction:

- FFMA: one fused multiply-add per lane, 32 MACs;
- HMMA.MNK (mma.sync, one warp): M·N·K MACs, e.g. HMMA.16816 = 16·8·16;
- HGMMA.MxNxK (wgmma, issued by each of the 4 warps of a warpgroup): M·N·K / 4 per warp.

Counts are static: one pass through the loop body, as every iteration issues it. A loop
nested in another (a channel-tile loop inside the key loop) counts once in the outer
loop's body; of loops with equal matrix work the shortest is the main loop (the key
loop, not a loop of tiles around it). Every instruction in the range counts, the
scheduling no-ops ptxas places between tensor-core instructions (``@!UPT UIADD3 URZ,
...``) included: they take issue slots too.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile

import triton

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")

_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[0-9T]+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")
_BRANCH_TARGET = re.compile(r"(0x[0-9a-f]+)\s*$")  # the last operand, after any predicate
_HMMA_SHAPE = re.compile(r"^HMMA\.(16|8)(8)(\d+)")
_HGMMA_SHAPE = re.compile(r"^HGMMA\.(\d+)x(\d+)x(\d+)")


@dataclasses.dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with modifiers, e.g. "HMMA.16816.F32"
    operands: str

    @property
    def mnemonic(self) -> str:
        return self.opcode.split(".")[0]

    @property
    def macs(self) -> int:
        """Multiply-accumulates one warp issues with this instruction."""
        if self.mnemonic == "FFMA":
            return 32
        if match := _HMMA_SHAPE.match(self.opcode):
            m, n, k = map(int, match.groups())
            return m * n * k
        if match := _HGMMA_SHAPE.match(self.opcode):
            m, n, k = map(int, match.groups())
            return m * n * k // 4
        return 0


@dataclasses.dataclass
class LoopMetrics:
    instructions: int  # instructions in the loop body, nested loops counted once
    ffma: int
    hmma: int
    hgmma: int
    macs: int
    mma_shapes: tuple[str, ...]  # distinct HMMA / HGMMA opcodes

    @property
    def macs_per_instruction(self) -> float:
        return self.macs / self.instructions if self.instructions else 0.0

    @property
    def ffma_share(self) -> float:
        return self.ffma / self.instructions if self.instructions else 0.0


def _with_cubin_file(cubin: bytes, *cuobjdump_args: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([CUOBJDUMP, *cuobjdump_args, f.name], capture_output=True, text=True,
                              check=True).stdout


def parse_sass(text: str) -> list[Instruction]:
    """The instructions of a ``cuobjdump -sass`` listing, in address order."""
    return [Instruction(int(address, 16), opcode, operands.strip())
            for address, opcode, operands in _INSTRUCTION.findall(text)]


def disassemble(cubin: bytes) -> list[Instruction]:
    return parse_sass(_with_cubin_file(cubin, "-sass"))


def resource_usage(cubin: bytes) -> dict:
    """Registers and spill memory (STACK + LOCAL bytes) per thread, from the cubin."""
    text = _with_cubin_file(cubin, "--dump-resource-usage")
    usage = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", text))
    return {"registers": int(usage["REG"]), "spill_bytes": int(usage.get("STACK", 0)) + int(usage.get("LOCAL", 0))}


def loops(instructions: list[Instruction]) -> list[tuple[int, int]]:
    """(first, last) instruction indices of every loop: a branch back to an earlier address."""
    index_of = {ins.address: i for i, ins in enumerate(instructions)}
    found = []
    for i, ins in enumerate(instructions):
        if ins.mnemonic != "BRA":
            continue
        target = _BRANCH_TARGET.search(ins.operands)
        if target and int(target.group(1), 16) < ins.address:
            found.append((index_of[int(target.group(1), 16)], i))
    return found


def loop_metrics(body: list[Instruction]) -> LoopMetrics:
    return LoopMetrics(
        instructions=len(body),
        ffma=sum(ins.mnemonic == "FFMA" for ins in body),
        hmma=sum(ins.mnemonic == "HMMA" for ins in body),
        hgmma=sum(ins.mnemonic == "HGMMA" for ins in body),
        macs=sum(ins.macs for ins in body),
        mma_shapes=tuple(sorted({ins.opcode for ins in body if ins.mnemonic in ("HMMA", "HGMMA")})),
    )


def main_loop(instructions: list[Instruction]) -> LoopMetrics | None:
    """The loop that does the most MACs (of those, the shortest: an inner loop holding all
    the matrix work rather than the loop around it; the longest loop if none does any);
    None for straight-line code."""
    metrics = [loop_metrics(instructions[first:last + 1]) for first, last in loops(instructions)]
    if not metrics:
        return None
    return max(metrics, key=lambda m: (m.macs, -m.instructions if m.macs else m.instructions))


def kernel_metrics(compiled) -> dict:
    """Registers, spills, shared memory and main-loop figures of a triton CompiledKernel."""
    cubin = compiled.asm["cubin"]
    metrics = {**resource_usage(cubin), "shared_bytes": compiled.metadata.shared}
    loop = main_loop(disassemble(cubin))
    if loop is not None:
        metrics["main_loop"] = dataclasses.asdict(loop) | {
            "macs_per_instruction": loop.macs_per_instruction, "ffma_share": loop.ffma_share}
    return metrics
