"""The torch reference against two independent statements of the same function: a dense
form built by explicit loops, and outputs of the NLSN authors' own code
(tests/fixtures/nlsn_outputs.pt; tests/fixtures/README.md says how it was made).
"§N" is section N of docs/semantics.md."""
from pathlib import Path

import pytest
import torch

import nlsa_triton as nt
from conftest import assert_close, random_perm
from nlsa_triton.chunks import chunk_layout

FIXTURE = torch.load(Path(__file__).parent / "fixtures" / "nlsn_outputs.pt", weights_only=True)
NLSN_SPARSE = [pytest.param(c, id=c["name"]) for c in FIXTURE["cases"] if c["kind"] == "sparse"]
NLSN_FULL = [pytest.param(c, id=c["name"]) for c in FIXTURE["cases"] if c["kind"] == "full"]


def dense_multiplicity_attention(x, y, perm, chunk_size):
    """out_i = sum_j M_ij e^{s_ij} y_j / sum_j M_ij e^{s_ij}, where M_ij counts how often
    pixel j is among query i's candidates over all rounds, built by explicit loops (§4.3, §6.1)."""
    n, length, _ = x.shape
    chunk, padding, n_chunks = chunk_layout(length, chunk_size)
    counts = torch.zeros(n, length, length, dtype=x.dtype)
    for b in range(n):
        for r in range(perm.shape[1]):
            order = perm[b, r].tolist()
            padded = order + order[length - padding:]
            for p in range(length):
                j = p // chunk
                for neighbour in (j, j - 1, j + 1):
                    start = (neighbour % n_chunks) * chunk
                    for key in padded[start:start + chunk]:
                        counts[b, order[p], key] += 1
    keys = x / x.norm(dim=-1, keepdim=True).clamp_min(5e-5)
    scores = x @ keys.transpose(1, 2)
    weights = counts * torch.exp(scores - scores.amax(-1, keepdim=True))
    return (weights / weights.sum(-1, keepdim=True)) @ y


SHAPES = [  # N, L, d, c, n_hashes, chunk_size
    pytest.param(1, 1, 4, 3, 1, 8, id="L=1"),
    pytest.param(2, 5, 4, 6, 2, 8, id="L<K"),
    pytest.param(1, 8, 4, 6, 3, 8, id="L=K"),
    pytest.param(2, 16, 4, 6, 2, 8, id="two_chunks"),
    pytest.param(1, 11, 4, 6, 2, 8, id="two_chunks_padded"),
    pytest.param(1, 21, 5, 7, 4, 8, id="padding_longer_than_tail"),
    pytest.param(2, 45, 6, 5, 3, 8, id="many_chunks"),
]


@pytest.mark.parametrize("n, length, d, c, n_hashes, chunk_size", SHAPES)
def test_reference_equals_dense_multiplicity_form(n, length, d, c, n_hashes, chunk_size):
    gen = torch.Generator().manual_seed(length * 31 + n_hashes)
    x = torch.randn(n, length, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, length, c, generator=gen, dtype=torch.float64)
    codes = torch.randint(0, 4, (n, n_hashes, length), generator=gen)
    perm = nt.bucket_sort(codes)
    expected = dense_multiplicity_attention(x, y, perm, chunk_size)
    assert_close("reference", nt.reference.chunked_attention(x, y, perm, chunk_size), expected, 1e-12)


def _nlsn_attention(case):
    """The attention part of NLSN's recorded output, (output - input) / res_scale, as (N, L, c)."""
    out = (case["output"] - case["input"]) / case["res_scale"]
    return out.flatten(2).transpose(1, 2)


def _dense_work(case):
    """Candidate visits of dense_multiplicity_attention's loops."""
    length = case["H"] * case["W"]
    return case["N"] * case["n_hashes"] * length * 3 * min(case["chunk_size"], length)


@pytest.mark.parametrize("case", NLSN_SPARSE)
def test_reference_and_dense_form_equal_nlsn_on_its_sort_order(case):
    """Driven by the order NLSN's unstable sort actually produced (§3-§6, §9.1)."""
    x, y, perm, chunk_size = case["x"], case["y"], case["perm"].long(), case["chunk_size"]
    expected = _nlsn_attention(case)
    assert_close("reference", nt.reference.chunked_attention(x, y, perm, chunk_size), expected, 1e-14)
    if _dense_work(case) <= 20_000:  # the explicit loops take seconds on the larger cases
        assert_close("dense form", dense_multiplicity_attention(x, y, perm, chunk_size), expected, 1e-14)


@pytest.mark.parametrize("case", NLSN_SPARSE)
def test_reference_hash_equals_nlsn(case):
    """Same bucket count (§1) and codes from the same rotations (§2); NLSN's order sorts them (§3)."""
    length = case["H"] * case["W"]
    assert nt.num_buckets(length, case["chunk_size"]) == case["n_buckets"]
    codes, perm = case["codes"].long(), case["perm"].long()
    assert torch.equal(nt.reference.lsh_hash(case["x"], case["rotations"]), codes)
    assert torch.equal(perm.sort(dim=-1).values, torch.arange(length).expand_as(perm))
    sorted_codes = codes.gather(-1, perm)
    assert torch.equal(sorted_codes, codes.gather(-1, nt.bucket_sort(codes)))


@pytest.mark.parametrize("case", NLSN_SPARSE)
def test_module_with_nlsn_state_dict_equals_nlsn(case):
    """NLSN's state_dict loads unchanged and gives NLSN's embeddings (§7.1). The whole
    forward (with the stable sort) matches where the order inside a bucket cannot change
    the result: NLSN's sort happened to be stable, or every query's candidates are all L
    positions (one chunk, or three chunks without padding)."""
    module = nt.NonLocalSparseAttention(
        channels=case["C"], n_hashes=case["n_hashes"], chunk_size=case["chunk_size"],
        reduction=case["reduction"], k_size=case["k_size"], res_scale=case["res_scale"], backend="torch",
    ).double()
    module.load_state_dict(case["state_dict"], strict=True)
    inp = case["input"]
    with torch.no_grad():
        assert_close("x (conv_match)", module.conv_match(inp).flatten(2).transpose(1, 2), case["x"], 1e-14)
        assert_close("y (conv_assembly)", module.conv_assembly(inp).flatten(2).transpose(1, 2), case["y"], 1e-14)
        layout = chunk_layout(case["H"] * case["W"], case["chunk_size"])
        if case["perm_is_stable_argsort"] or (layout.padding == 0 and layout.n_chunks in (1, 3)):
            assert_close("module output", module(inp, case["rotations"]), case["output"], 1e-14)


@pytest.mark.parametrize("case", NLSN_FULL)
def test_full_attention_module_with_nlsn_state_dict_equals_nlsn(case):
    """NLSN's full-attention baseline (§7.2), from its own state_dict."""
    module = nt.NonLocalAttention(channel=case["C"], reduction=case["reduction"],
                                  res_scale=case["res_scale"]).double()
    module.load_state_dict(case["state_dict"], strict=True)
    with torch.no_grad():
        assert_close("module output", module(case["input"]), case["output"], 1e-14)


@pytest.mark.parametrize(
    "length, chunk_size, expected",
    [(1, 144, 2), (144, 144, 2), (145, 144, 2), (288, 144, 2), (432, 144, 4), (100 * 144, 144, 100),
     (129 * 144, 144, 128), (101 * 144, 144, 102)],
)
def test_num_buckets(length, chunk_size, expected):
    """§1, with B = 2 for L <= chunk_size (§9.2)."""
    assert nt.num_buckets(length, chunk_size) == expected


def test_when_all_keys_fit_one_chunk_the_hash_does_not_matter():
    """L <= chunk_size is one chunk: plain attention over all pixels, whatever perm is (§9.2)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 9, 4, generator=gen, dtype=torch.float64), torch.randn(2, 9, 5, generator=gen,
                                                                                   dtype=torch.float64)
    perm = random_perm(2, 3, 9, gen, device="cpu")
    full = torch.softmax(x @ (x / x.norm(dim=-1, keepdim=True)).transpose(1, 2), -1) @ y
    assert_close("reference", nt.reference.chunked_attention(x, y, perm, 16), full, 1e-12)
