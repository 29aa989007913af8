"""Rounds in groups: the forward and backward launch once per group of rounds (all of them
unless the image is huge, ``chunk_tiles.round_group``); grouping changes nothing but the
launch count and the extra memory."""
import importlib

import pytest
import torch

from conftest import HAS_GPU, assert_close, bucket_perm, make_inputs
from nlsa_triton import _ops
from nlsa_triton.kernels.chunk_tiles import GROUP_BYTES_MIN, round_group

FWD = importlib.import_module("nlsa_triton.kernels.chunked_attention_fwd")
BWD = importlib.import_module("nlsa_triton.kernels.chunked_attention_bwd")


def test_round_group_holds_the_budget():
    mib = 2**20
    assert round_group(4, 13 * mib, 6 * mib) == 4  # Table 2: every round in one group
    assert round_group(4, GROUP_BYTES_MIN // 2, 1) == 2
    assert round_group(4, 3 * GROUP_BYTES_MIN, 1) == 1  # at least one round
    assert round_group(8, 400 * mib, 1000 * mib) == 5  # 2 outputs' worth when that is more


def _run(monkeypatch, group, x, y, perm, grad_out, chunk):
    monkeypatch.setattr(FWD, "round_group", lambda rounds, *_: min(group, rounds))
    monkeypatch.setattr(BWD, "round_group", lambda rounds, *_: min(group, rounds))
    out, lse, out_fp32 = _ops.chunked_attention_fwd_op(x, y, perm, chunk, "none", True)
    saved = out_fp32 if out_fp32.numel() else out
    dx, dy = _ops.chunked_attention_bwd_op(grad_out, x, y, perm, saved, lse, chunk)
    return out, lse, saved, dx, dy


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float16, 2e-3)], ids=["fp32", "fp16"])
def test_grouping_changes_nothing(monkeypatch, dtype, tol):
    x, y, gen = make_inputs(2, 16 * 5 + 7, 8, 24, seed=3, dtype=dtype)
    perm = bucket_perm(2, 3, x.shape[1], gen)
    grad_out = torch.randn(y.shape, generator=gen).to(y.device, dtype)
    whole = _run(monkeypatch, 3, x, y, perm, grad_out, 16)
    for group in (1, 2):
        out, lse, saved, dx, dy = _run(monkeypatch, group, x, y, perm, grad_out, 16)
        # The merge adds the rounds in round order whatever the grouping: the same bits.
        assert torch.equal(out, whole[0]) and torch.equal(lse, whole[1]) and torch.equal(saved, whole[2])
        assert_close(f"dx, groups of {group}", dx, whole[3], tol)
        assert_close(f"dy, groups of {group}", dy, whole[4], tol)


@pytest.mark.skipif(HAS_GPU, reason="traces the programs of Triton's interpreter (CPU runs only)")
def test_later_groups_are_race_free(monkeypatch):
    """The launches of a group after the first read the running sums (merge, fold): still no
    element written by one program and touched by another (test_races.py's tracer)."""
    from test_races import races, tracing_memory

    x, y, gen = make_inputs(2, 16 * 3 + 5, 8, 24, seed=4)
    perm = bucket_perm(2, 3, x.shape[1], gen)
    with tracing_memory() as launches:
        _run(monkeypatch, 2, x, y, perm, torch.randn(y.shape, generator=gen).to(y.device), 16)
    assert {launch.kernel for launch in launches} >= {"_merge_rounds_kernel", "_fold_ring_grads_kernel"}
    found = races(launches)
    assert not found, "\n".join(found)
