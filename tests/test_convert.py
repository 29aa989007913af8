"""convert_nlsa on models built with the NLSN authors' block layout.

``AuthorsNLSA`` is a stand-in written for this test: the authors' class name, attribute
names and module layout (EDSR's BasicBlock, a Sequential around one convolution, or plain
nn.Conv2d as in Semi-UIR), no forward of its own. The converted model must compute what
the same model computes with this package's block loaded with those weights."""
import pytest
import torch
from torch import nn

import nlsa_triton as nt


class NonLocalSparseAttention(nn.Module):  # the authors' name; the stand-in
    def __init__(self, n_hashes=4, channels=16, k_size=3, reduction=4, chunk_size=144, res_scale=1,
                 plain_conv=False):
        super().__init__()
        self.n_hashes, self.chunk_size, self.reduction, self.res_scale = n_hashes, chunk_size, reduction, res_scale

        def conv(c_in, c_out, k):
            layer = nn.Conv2d(c_in, c_out, k, padding=k // 2)
            return layer if plain_conv else nn.Sequential(layer)  # BasicBlock(conv, ..., bn=False, act=None)

        self.conv_match = conv(channels, channels // reduction, k_size)
        self.conv_assembly = conv(channels, channels, 1)


class Net(nn.Module):
    """A network around two attention blocks, one nested in a Sequential, one in a ModuleList."""

    def __init__(self, make_block):
        super().__init__()
        self.head = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(make_block(), nn.ReLU())
        self.more = nn.ModuleList([make_block()])
        self.tail = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x, generator=None):
        kw = {} if generator is None else {"generator": generator}  # the authors' call: block(x)
        x = self.body[1](self.body[0](self.head(x), **kw))
        return self.tail(self.more[0](x, **kw))


def _authors_model(plain_conv):
    torch.manual_seed(0)
    return Net(lambda: NonLocalSparseAttention(n_hashes=2, channels=16, chunk_size=8, res_scale=0.1,
                                               plain_conv=plain_conv))


@pytest.mark.parametrize("plain_conv", [False, True], ids=["BasicBlock", "plain-conv"])
def test_converted_model_equals_the_package_block_with_those_weights(plain_conv):
    model = _authors_model(plain_conv).double().eval()
    keys = {k: t.clone() for k, t in model.state_dict().items()}
    params = list(model.parameters())
    assert nt.convert_nlsa(model, backend="torch") is model
    blocks = [model.body[0], model.more[0]]
    assert all(type(b) is nt.NonLocalSparseAttention for b in blocks)
    assert all((b.n_hashes, b.chunk_size, b.reduction, b.k_size, b.res_scale, b.channels, b.backend)
               == (2, 8, 4, 3, 0.1, 16, "torch") for b in blocks)
    # Same keys, same values, the very same Parameter objects (an optimizer keeps working),
    # same dtype, same mode.
    assert list(model.state_dict()) == list(keys)
    assert all(torch.equal(model.state_dict()[k], t) for k, t in keys.items())
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert not any(b.training for b in blocks)

    # The package's own blocks, loaded with the stand-ins' weights (keys renamed for the plain layout).
    reference = Net(lambda: nt.NonLocalSparseAttention(16, n_hashes=2, chunk_size=8, res_scale=0.1,
                                                       backend="torch")).double().eval()
    renamed = {k.replace("conv_match.", "conv_match.0.").replace("conv_assembly.", "conv_assembly.0.")
               if plain_conv else k: t for k, t in keys.items()}
    reference.load_state_dict(renamed)
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64)  # 63 pixels: 8 chunks of 8, the last padded
    with torch.no_grad():
        ours = model(x, generator=torch.Generator().manual_seed(3))
        assert torch.equal(ours, reference(x, generator=torch.Generator().manual_seed(3)))
        assert torch.isfinite(ours).all()
        # The authors' call, block(x), drawing from the global RNG as NLSN does.
        torch.manual_seed(5)
        a = model(x)
        torch.manual_seed(5)
        assert torch.equal(a, reference(x))
        assert not torch.equal(a, ours)  # other rotations, another result: the hash matters here


def test_device_dtype_training_mode_and_the_block_itself():
    block = NonLocalSparseAttention(channels=8, reduction=2, k_size=5, chunk_size=4).to(torch.float64).train()
    new = nt.convert_nlsa(block)
    assert type(new) is nt.NonLocalSparseAttention and new.training and new.k_size == 5 and new.reduction == 2
    assert new.conv_match[0].weight.dtype == torch.float64 and new.backend == "auto"
    x = torch.rand(1, 8, 4, 5, dtype=torch.float64, requires_grad=True)
    new(x, generator=torch.Generator().manual_seed(0)).sum().backward()  # trains: gradients reach the convs
    assert block.conv_match[0].weight.grad is not None


def test_what_is_not_the_authors_block_is_left_alone_or_refused():
    class Other(nn.Module):  # NLSN's attributes under another class name
        def __init__(self):
            super().__init__()
            inner = NonLocalSparseAttention(channels=8, reduction=2)
            self.__dict__.update({k: getattr(inner, k) for k in ("n_hashes", "chunk_size", "reduction", "res_scale")})
            self.conv_match, self.conv_assembly = inner.conv_match, inner.conv_assembly

    model = nn.Sequential(Other(), nt.NonLocalSparseAttention(8, reduction=2))
    package_block = model[1]
    nt.convert_nlsa(model)
    assert type(model[0]) is Other and model[1] is package_block
    nt.convert_nlsa(model, class_names=("Other",))  # a renamed copy of the authors' class
    assert type(model[0]) is nt.NonLocalSparseAttention

    strided = NonLocalSparseAttention(channels=8, reduction=2)
    strided.conv_match[0].stride = (2, 2)
    with pytest.raises(ValueError, match=r"model\.1\.conv_match is Conv2d.*stride 1"):
        nt.convert_nlsa(nn.Sequential(nn.Identity(), strided))
    with_act = NonLocalSparseAttention(channels=8, reduction=2)
    with_act.conv_assembly.append(nn.ReLU())
    with pytest.raises(ValueError, match=r"model\.conv_assembly is Sequential, not one nn.Conv2d"):
        nt.convert_nlsa(with_act)
