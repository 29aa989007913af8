"""CrissCrossAttention against a per-pixel statement of CCNet's rule, parameters, validation."""
import math

import pytest
import torch

import nlsa_triton as nt
from conftest import DEVICE, assert_close


def _conv1x1(conv: torch.nn.Conv2d, x: torch.Tensor, n: int, h: int, w: int) -> list:
    """The 1x1 conv at pixel (h, w) of sample n, written out: a list of output channels."""
    weight = conv.weight[:, :, 0, 0]
    return [
        conv.bias[o].item() + sum(weight[o, i].item() * x[n, i, h, w].item() for i in range(x.shape[1]))
        for o in range(weight.shape[0])
    ]


def _criss_cross_loops(module: nt.CrissCrossAttention, x: torch.Tensor) -> torch.Tensor:
    """CCNet's rule, one pixel at a time in Python floats: pixel (h, w) attends to its
    column without itself and its row with itself, one softmax over both; gamma * out + x;
    the same weights applied ``recurrence`` times."""
    gamma = module.gamma.item()
    for _ in range(module.recurrence):
        n_, c_, height, width = x.shape
        q = {(n, h, w): _conv1x1(module.query_conv, x, n, h, w)
             for n in range(n_) for h in range(height) for w in range(width)}
        k = {key: _conv1x1(module.key_conv, x, *key) for key in q}
        val = {key: _conv1x1(module.value_conv, x, *key) for key in q}
        out = torch.zeros_like(x)
        for n in range(n_):
            for h in range(height):
                for w in range(width):
                    candidates = [(n, g, w) for g in range(height) if g != h]  # column, not self
                    candidates += [(n, h, u) for u in range(width)]  # row, self included
                    energy = [sum(a * b for a, b in zip(q[n, h, w], k[cand])) for cand in candidates]
                    top = max(energy)
                    expo = [math.exp(e - top) for e in energy]
                    total = sum(expo)
                    for ch in range(c_):
                        agg = sum(e / total * val[cand][ch] for e, cand in zip(expo, candidates))
                        out[n, ch, h, w] = gamma * agg + x[n, ch, h, w].item()
        x = out
    return x


def _module(channels, reduction, recurrence, seed, gamma=0.7):
    torch.manual_seed(seed)
    module = nt.CrissCrossAttention(channels, reduction=reduction, recurrence=recurrence).double()
    with torch.no_grad():
        module.gamma.fill_(gamma)
    return module


@pytest.mark.parametrize("recurrence", [1, 2])
@pytest.mark.parametrize("height, width", [(3, 4), (5, 3), (1, 4), (4, 1)])
def test_matches_per_pixel_rule(height, width, recurrence):
    module = _module(8, 4, recurrence, seed=height * 10 + width)
    x = torch.randn(2, 8, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(recurrence))
    with torch.no_grad():
        expected = _criss_cross_loops(module, x)
        out = module(x)
    assert out.shape == x.shape and out.dtype == torch.float64
    assert_close("out", out, expected, 1e-12)
    assert (out - x).abs().max() > 1e-3  # gamma != 0: the attention term is really there


def test_default_reduction_and_device():
    module = _module(16, 8, 2, seed=3, gamma=-1.3)
    x = torch.randn(2, 16, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = _criss_cross_loops(module, x)
        out = module.float().to(DEVICE)(x.float().to(DEVICE))
    assert out.dtype == torch.float32 and out.device.type == torch.device(DEVICE).type
    assert_close("out", out.cpu(), expected, 1e-5)


def test_fresh_module_is_identity_and_gamma_learns():
    torch.manual_seed(0)
    module = nt.CrissCrossAttention(16)
    assert module.gamma.shape == (1,) and module.gamma.item() == 0.0
    x = torch.randn(2, 16, 6, 5)
    out = module(x)
    assert torch.equal(out, x)
    out.square().sum().backward()
    assert module.gamma.grad is not None and module.gamma.grad.abs().item() > 0


def test_gradients_reach_every_parameter():
    module = _module(8, 4, 2, seed=1)
    x = torch.randn(1, 8, 4, 3, dtype=torch.float64, requires_grad=True)
    module(x).sin().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, param in module.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_state_dict_keys_and_shapes():
    module = nt.CrissCrossAttention(64, reduction=8, recurrence=2)
    shapes = {key: tuple(t.shape) for key, t in module.state_dict().items()}
    assert shapes == {
        "query_conv.weight": (8, 64, 1, 1),
        "query_conv.bias": (8,),
        "key_conv.weight": (8, 64, 1, 1),
        "key_conv.bias": (8,),
        "value_conv.weight": (64, 64, 1, 1),
        "value_conv.bias": (64,),
        "gamma": (1,),
    }
    # A CCNet-named state dict loads unchanged.
    other = nt.CrissCrossAttention(64)
    other.load_state_dict(module.state_dict())


def test_extra_repr():
    text = repr(nt.CrissCrossAttention(32, reduction=4, recurrence=1))
    assert "channels=32, reduction=4, recurrence=1" in text


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(channels=0), ValueError),
        (dict(channels=16.0), TypeError),
        (dict(channels=16, reduction=0), ValueError),
        (dict(channels=16, reduction=True), TypeError),
        (dict(channels=16, recurrence=0), ValueError),
        (dict(channels=16, recurrence=1.5), TypeError),
        (dict(channels=4, reduction=8), ValueError),
    ],
)
def test_constructor_validation(kwargs, error):
    with pytest.raises(error):
        nt.CrissCrossAttention(**kwargs)


def test_forward_validation():
    module = nt.CrissCrossAttention(16)
    with pytest.raises(ValueError, match="16 channels"):
        module(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="rank 4"):
        module(torch.randn(16, 4, 4))
    with pytest.raises(TypeError, match="floating"):
        module(torch.ones(1, 16, 4, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="parameters' dtype"):
        module(torch.randn(1, 16, 4, 4, dtype=torch.float64))
