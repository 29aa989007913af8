"""The benchmark settings' kernels keep their inner loops dense in matrix work (issue 10's
targets), checked on the sm_90 SASS with no GPU.

The compiled configurations are the ones tests/test_triton_compile.py compiles (one
compile per configuration per session, shared through compile_kernels.compiled): for
each kernel with a target and each dtype variant of Table 2's setting (d 16 / c 64) and
NLSN's (d 64 / c 256), chunk 144, the main loop (bench/sass_metrics.py) must reach the
MACs per issued instruction below; the half-precision forward must use wgmma (HGMMA) and
the fp32 forward must spend most issue slots on FFMA. The share of issued tl.dot MACs
that are masked away or repeated (bench/dot_macs.py, counted in the interpreter) must
stay under MAX_MASKED_SHARE (fp32 and fp16; the interpreter is slow). tf32 has no
density target and no share check here (the report shows both).
"""
import pytest

import compile_kernels
import dot_macs
from conftest import HAS_GPU
from kernel_launches import SETTINGS, setting_problems
from sass_metrics import main_loop, parse_sass

FORWARD = "_chunked_attention_fwd_kernel"
BACKWARD_DQ = "_chunked_attention_bwd_dq_kernel"
BACKWARD_DKDV = "_chunked_attention_bwd_dkdv_kernel"

# (kernel, variant) -> least MACs per issued instruction in the main loop.
MIN_MACS_PER_INSTRUCTION = {
    **{(FORWARD, variant): 250 for variant in ("fp16", "bf16")},
    **{(kernel, variant): 200 for kernel in (BACKWARD_DQ, BACKWARD_DKDV) for variant in ("fp16", "bf16")},
    (FORWARD, "fp32"): 24,
    (BACKWARD_DQ, "fp32"): 22,
    (BACKWARD_DKDV, "fp32"): 22,
}
MIN_FP32_FORWARD_FFMA_SHARE = 0.75
MAX_MASKED_SHARE = 0.30
# bf16 launches the tiles fp16 does; bench/sass_report.py counts it (and tf32), CI need not.
MASKED_SHARE_VARIANTS = ("fp32", "fp16")


# First in the file: the count runs in this process while the compile workers run in theirs.
@pytest.fixture(scope="module")
def masked_shares():
    compile_kernels.start()
    return {(problem.setting, problem.variant): dot_macs.masked_shares(problem)
            for setting in SETTINGS for problem in setting_problems(setting, MASKED_SHARE_VARIANTS)}


@pytest.mark.skipif(HAS_GPU, reason="counts tl.dot MACs in Triton's interpreter (CPU runs only)")
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("variant", MASKED_SHARE_VARIANTS)
def test_masked_mac_share(masked_shares, variant, setting):
    shares = masked_shares[setting, variant]
    assert {FORWARD, BACKWARD_DQ, BACKWARD_DKDV} <= set(shares)
    high = [f"{name}: {s['masked_share']:.1%} of {s['issued_macs']} issued MACs"
            for name, s in shares.items() if s["masked_share"] is not None and s["masked_share"] > MAX_MASKED_SHARE]
    assert not high, "\n".join(high)


def _default_records(kernel, setting, variant):
    """The configurations a setting launches that carry its work. The forward's exact
    non-finite launch is left out: it computes only the tiles whose key range holds a
    NaN or infinite value (none for finite inputs), the fast launch does the rest; it is
    still compiled, and checked for spills, by test_triton_compile.py."""
    records = [r for r in compile_kernels.compiled(90)
               if r["kernel"] == kernel and [setting, variant] in r["default_uses"]
               and "EXACT_NONFINITE=True" not in r["configuration"]]
    assert records, f"no configuration of {kernel} is launched for {setting} {variant}"
    return records


def _loop(record):
    assert "error" not in record, record["error"]
    assert "main_loop" in record, f"{record['kernel']} [{record['configuration']}] has no loop"
    return record["main_loop"]


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("kernel,variant", MIN_MACS_PER_INSTRUCTION)
def test_main_loop_macs_per_instruction(kernel, variant, setting):
    target = MIN_MACS_PER_INSTRUCTION[kernel, variant]
    low = [f"[{r['configuration']}] {r['jit_constants']}: {_loop(r)['macs_per_instruction']:.1f} MACs per instruction "
           f"({_loop(r)['instructions']} instructions)"
           for r in _default_records(kernel, setting, variant) if _loop(r)["macs_per_instruction"] < target]
    assert not low, f"{kernel} {setting} {variant} below {target}:\n" + "\n".join(low)


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("variant", ["fp16", "bf16"])
def test_half_precision_forward_uses_wgmma(variant, setting):
    without = [f"[{r['configuration']}] {r['jit_constants']}: {_loop(r)['mma_shapes']}"
               for r in _default_records(FORWARD, setting, variant) if not _loop(r)["hgmma"]]
    assert not without, f"forward {setting} {variant} main loop without HGMMA:\n" + "\n".join(without)


@pytest.mark.parametrize("setting", SETTINGS)
def test_fp32_forward_is_mostly_ffma(setting):
    low = [f"[{r['configuration']}] {r['jit_constants']}: {_loop(r)['ffma_share']:.0%} FFMA"
           for r in _default_records(FORWARD, setting, "fp32") if _loop(r)["ffma_share"] < MIN_FP32_FORWARD_FFMA_SHARE]
    assert not low, "\n".join(low)


# Two loops: a key loop (FFMA, mma.sync, wgmma) with a channel loop nested in it, and a
# loop around both that adds nothing; the forward branch is no loop.
LISTING = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   IMAD R2, R3, R4, R5 ;
        /*0020*/              @!P0 BRA 0x0090 ;
        /*0030*/                   HMMA.16816.F32 R8, R12, R16, R8 ;
        /*0040*/                   HGMMA.64x64x16.F32 gdesc[UR4], RZ, !UPT, gsb0 ;
        /*0050*/                   FFMA R2, R3, R4, R5 ;
        /*0060*/              @!UPT UIADD3 URZ, URZ, URZ, URZ ;
        /*0070*/              @P1 BRA 0x0050 ;
        /*0080*/              @P2 BRA 0x0030 ;
        /*0090*/              @P3 BRA 0x0010 ;
        /*00a0*/                   EXIT ;
        /*00b0*/                   BRA 0xb0;
"""


def test_main_loop_counts_macs_per_issued_instruction():
    loop = main_loop(parse_sass(LISTING))
    assert (loop.instructions, loop.ffma, loop.hmma, loop.hgmma) == (6, 1, 1, 1)
    assert loop.macs == 32 + 16 * 8 * 16 + 64 * 64 * 16 // 4
    assert loop.mma_shapes == ("HGMMA.64x64x16.F32", "HMMA.16816.F32")
