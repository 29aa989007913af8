"""The drop-in modules: NLSN's parameter names, every backend, NLSN's full-attention baseline.

The sparse module's forward against the NLSN authors' own outputs is in test_reference.py
(tests/fixtures/nlsn_outputs.pt)."""
import pytest
import torch
import torch.nn.functional as F

import nlsa_triton as nt
from conftest import DEVICE, assert_close

NLSA_KEYS = ["conv_match.0.weight", "conv_match.0.bias", "conv_assembly.0.weight", "conv_assembly.0.bias"]
NLA_KEYS = [f"{m}.{k}" for m in ("conv_match1", "conv_match2", "conv_assembly")
            for k in ("0.weight", "0.bias", "1.weight")]


def test_sparse_attention_state_dict_has_nlsn_keys_and_round_trips():
    module = nt.NonLocalSparseAttention(channels=16, reduction=4, k_size=3)
    state = module.state_dict()
    assert list(state) == NLSA_KEYS
    assert state["conv_match.0.weight"].shape == (4, 16, 3, 3)
    assert state["conv_assembly.0.weight"].shape == (16, 16, 1, 1)
    other = nt.NonLocalSparseAttention(channels=16, reduction=4, k_size=3)
    other.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)
    assert all(torch.equal(other.state_dict()[k], state[k]) for k in NLSA_KEYS)


def test_full_attention_state_dict_has_nlsn_keys():
    assert list(nt.NonLocalAttention(channel=8, reduction=2).state_dict()) == NLA_KEYS


@pytest.mark.parametrize(
    "n, h, w, chunk_size, n_hashes",
    [pytest.param(2, 6, 7, 16, 2, id="6x7"), pytest.param(1, 3, 5, 144, 4, id="3x5_L<K"),
     pytest.param(1, 1, 1, 16, 1, id="1x1")],
)
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_sparse_attention_module_equals_reference_backend(n, h, w, chunk_size, n_hashes, backend):
    torch.manual_seed(0)
    module = nt.NonLocalSparseAttention(channels=16, n_hashes=n_hashes, chunk_size=chunk_size,
                                        res_scale=0.5).to(DEVICE)
    inp = torch.randn(n, 16, h, w, device=DEVICE)
    rotations = nt.random_rotations(4, n_hashes, nt.num_buckets(h * w, chunk_size), device=DEVICE)
    module.backend = backend
    out = module(inp, rotations)
    module.backend = "reference"
    expected = module(inp, rotations)
    assert out.shape == inp.shape
    assert_close(f"{backend} module output", out, expected, 2e-6)


def test_sparse_attention_module_equals_its_definition():
    """res_scale * nlsa(conv_match(input), conv_assembly(input)) + input, in float64, on
    the default backend (the torch backend on CPU)."""
    torch.manual_seed(1)
    module = nt.NonLocalSparseAttention(channels=16, n_hashes=2, chunk_size=8, res_scale=0.1).double()
    inp = torch.randn(1, 16, 5, 7, dtype=torch.float64)
    rotations = nt.random_rotations(4, 2, nt.num_buckets(35, 8), dtype=torch.float64)
    x = module.conv_match(inp).flatten(2).transpose(1, 2)
    y = module.conv_assembly(inp).flatten(2).transpose(1, 2)
    attention = nt.reference.nlsa(x, y, n_hashes=2, chunk_size=8, rotations=rotations)
    expected = attention.transpose(1, 2).reshape(inp.shape) * 0.1 + inp
    assert_close("module output", module(inp, rotations), expected, 1e-12)


def test_full_attention_equals_nlsn_forward():
    torch.manual_seed(2)
    module = nt.NonLocalAttention(channel=8, reduction=2, res_scale=0.5).double()
    inp = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    n, c, h, w = inp.shape
    # NLSN's NonLocalAttention.forward, transcribed.
    x_embed_1 = module.conv_match1(inp).permute(0, 2, 3, 1).reshape(n, h * w, -1)
    x_embed_2 = module.conv_match2(inp).reshape(n, -1, h * w)
    score = F.softmax(torch.matmul(x_embed_1, x_embed_2), dim=2)
    x_assembly = module.conv_assembly(inp).reshape(n, -1, h * w).permute(0, 2, 1)
    expected = torch.matmul(score, x_assembly).permute(0, 2, 1).reshape(n, -1, h, w) + 0.5 * inp
    assert_close("module output", module(inp), expected, 1e-12)


def test_modules_describe_themselves():
    text = repr(nt.NonLocalSparseAttention(channels=32, n_hashes=2, chunk_size=64, backend="torch"))
    assert "channels=32, n_hashes=2, chunk_size=64" in text and "backend='torch'" in text
    assert "channels=8, reduction=2" in repr(nt.NonLocalAttention(channel=8))


def test_every_module_takes_channels():
    """``channels`` is the name for every module; NonLocalAttention also keeps NLSN's ``channel``."""
    torch.manual_seed(0)
    for module in (nt.NonLocalSparseAttention(channels=8, chunk_size=4), nt.NonLocalAttention(channels=8),
                   nt.CrissCrossAttention(channels=8)):
        assert module.channels == 8
        assert module(torch.randn(1, 8, 3, 5)).shape == (1, 8, 3, 5)
    a, b = nt.NonLocalAttention(channels=12, reduction=3), nt.NonLocalAttention(channel=12, reduction=3)
    assert a.channel == b.channel == 12 and a.state_dict().keys() == b.state_dict().keys()
    assert a.conv_match1[0].out_channels == 4 and nt.NonLocalAttention().channels == 128  # NLSN's default
    with pytest.raises(ValueError, match=r"channel \(8\) and channels \(16\)"):
        nt.NonLocalAttention(channel=8, channels=16)
    with pytest.raises(ValueError, match="channels"):
        nt.NonLocalAttention(channels=10, reduction=4)
