"""Every kernel configuration compiles for H100 (sm_90) and A100 (sm_80), with no GPU needed.

The interpreter forgives what the GPU compiler rejects (non-constexpr globals, dot shapes,
types), so each configuration a launcher can choose goes through triton.compile to a
cubin; the ones it picks for the common problems must also not spill registers.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("compile_kernels.py")


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    runs = {sm: subprocess.Popen([sys.executable, str(SCRIPT), str(sm)], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for sm in (90, 80)}
    records = {}
    for sm, run in runs.items():
        out, err = run.communicate(timeout=900)
        assert run.returncode == 0, err[-3000:]
        records[sm] = [json.loads(line) for line in out.splitlines()]
    return records


@pytest.mark.parametrize("sm", [90, 80])
def test_every_configuration_compiles(compiled, sm):
    records = compiled[sm]
    kernels = {r["kernel"] for r in records}
    assert kernels == {"_chunked_attention_fwd_kernel", "_chunked_attention_bwd_dq_kernel",
                       "_chunked_attention_bwd_dkdv_kernel", "_lsh_hash_kernel"}
    failures = [f"{r['kernel']} [{r['config']}]: {r['error']}" for r in records if "error" in r]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("sm", [90, 80])
def test_default_configurations_do_not_spill(compiled, sm):
    spilling = [f"{r['kernel']} [{r['config']}]: {r['n_regs']} registers, {r['spill_bytes']} bytes spilled"
                for r in compiled[sm] if r["default"] and r.get("spill_bytes")]
    assert not spilling, "\n".join(spilling)
