"""NLSN: the authors' checkpoint layout, checkpoints as users have them, config inference,
and Triton vs reference forward."""
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, rel_err

import nlsa_triton as nt
from nlsa_triton.models import NLSN
from nlsa_triton.models.checkpoint import is_nlsn_state_dict

# A tiny NLSN: 16 features (match embedding d = 4), 8 residual blocks -> 2 NLSA blocks.
TINY = dict(n_feats=16, n_resblocks=8, chunk_size=24, n_hashes=2, res_scale=1.0)
H, W = 10, 12  # L = 120 > chunk_size: 5 chunks, 6 buckets


def _expected_keys(n_feats, n_resblocks, scale):
    """The authors' state_dict keys and shapes, written from their nlsn.py / common.py:
    sub_mean, add_mean (MeanShift = 1x1 Conv2d(3, 3)); head = [conv(3, n_feats)];
    body = [NLSA] + per block i: ResBlock (body.0 conv, body.1 ReLU, body.2 conv), then an
    NLSA when (i + 1) % 8 == 0; then conv(n_feats, n_feats); tail = [Upsampler, conv]."""
    f, d = n_feats, n_feats // 4
    keys = {
        "sub_mean.weight": (3, 3, 1, 1), "sub_mean.bias": (3,),
        "add_mean.weight": (3, 3, 1, 1), "add_mean.bias": (3,),
        "head.0.weight": (f, 3, 3, 3), "head.0.bias": (f,),
    }

    def nlsa(i):
        keys.update({
            f"body.{i}.conv_match.0.weight": (d, f, 3, 3), f"body.{i}.conv_match.0.bias": (d,),
            f"body.{i}.conv_assembly.0.weight": (f, f, 1, 1), f"body.{i}.conv_assembly.0.bias": (f,),
        })

    i = 0
    nlsa(i)
    for block in range(n_resblocks):
        i += 1
        for j in (0, 2):
            keys[f"body.{i}.body.{j}.weight"] = (f, f, 3, 3)
            keys[f"body.{i}.body.{j}.bias"] = (f,)
        if (block + 1) % 8 == 0:
            i += 1
            nlsa(i)
    i += 1
    keys[f"body.{i}.weight"], keys[f"body.{i}.bias"] = (f, f, 3, 3), (f,)
    if scale == 3:
        keys["tail.0.0.weight"], keys["tail.0.0.bias"] = (9 * f, f, 3, 3), (9 * f,)
    else:
        for k in range(scale.bit_length() - 1):
            keys[f"tail.0.{2 * k}.weight"], keys[f"tail.0.{2 * k}.bias"] = (4 * f, f, 3, 3), (4 * f,)
    keys["tail.1.weight"], keys["tail.1.bias"] = (3, f, 3, 3), (3,)
    return keys


def test_tiny_state_dict_keys_written_out():
    """The key list for n_feats 16, n_resblocks 8, x2, spelled out (no loop)."""
    m = NLSN(2, n_feats=16, n_resblocks=8)
    expected = (
        ["sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias", "head.0.weight", "head.0.bias"]
        + [f"body.0.{p}.0.{t}" for p in ("conv_match", "conv_assembly") for t in ("weight", "bias")]
        + [f"body.{i}.body.{j}.{t}" for i in range(1, 9) for j in (0, 2) for t in ("weight", "bias")]
        + [f"body.9.{p}.0.{t}" for p in ("conv_match", "conv_assembly") for t in ("weight", "bias")]
        + ["body.10.weight", "body.10.bias", "tail.0.0.weight", "tail.0.0.bias", "tail.1.weight", "tail.1.bias"]
    )
    assert list(m.state_dict()) == expected


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("n_resblocks", [8, 12, 17])
def test_state_dict_matches_authors_layout(scale, n_resblocks):
    m = NLSN(scale, n_feats=16, n_resblocks=n_resblocks)
    got = {k: tuple(t.shape) for k, t in m.state_dict().items()}
    assert got == _expected_keys(16, n_resblocks, scale)
    # The authors' files load strictly into a fresh model.
    NLSN(scale, n_feats=16, n_resblocks=n_resblocks).load_state_dict(m.state_dict(), strict=True)


def test_paper_configuration_layout():
    m = NLSN(4)  # built on the CPU (~1 s): the tests' torch.empty patch defeats the meta device
    kinds = [type(b).__name__ for b in m.body]
    assert len(kinds) == 38
    assert [i for i, k in enumerate(kinds) if k == "NonLocalSparseAttention"] == [0, 9, 18, 27, 36]
    assert kinds[37] == "Conv2d" and kinds.count("ResBlock") == 32
    assert {k: tuple(t.shape) for k, t in m.state_dict().items()} == _expected_keys(256, 32, 4)
    assert all(b.res_scale == 0.1 and b.reduction == 4 and b.chunk_size == 144 and b.n_hashes == 4
               for b in m.attention_blocks)
    assert 44.0e6 < sum(p.numel() for p in m.parameters()) < 44.5e6  # the paper's ~44M


def test_mean_shift_and_frozen():
    m = NLSN(2, n_feats=8, n_resblocks=1, rgb_range=255)
    mean = torch.tensor([0.4488, 0.4371, 0.4040])
    assert torch.allclose(m.sub_mean.bias, -255 * mean) and torch.allclose(m.add_mean.bias, 255 * mean)
    assert torch.equal(m.sub_mean.weight.flatten(1), torch.eye(3))
    assert not any(p.requires_grad for p in (*m.sub_mean.parameters(), *m.add_mean.parameters()))


@pytest.mark.parametrize("scale,n_resblocks,rgb_range", [(2, 8, 1), (3, 10, 255), (4, 3, 1)])
def test_from_state_dict_infers_config(scale, n_resblocks, rgb_range):
    torch.manual_seed(0)
    src = NLSN(scale, n_feats=8, n_resblocks=n_resblocks, rgb_range=rgb_range, chunk_size=16)
    m = NLSN.from_state_dict(src.state_dict(), chunk_size=16)
    assert (m.scale, m.n_feats, m.n_resblocks, m.rgb_range) == (scale, 8, n_resblocks, rgb_range)
    assert type(m.rgb_range) is int
    for k, t in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], t)
    # A half-precision checkpoint still gives the exact rgb_range.
    assert NLSN.from_state_dict({k: t.half() for k, t in src.state_dict().items()}).rgb_range == rgb_range
    # DataParallel prefix and a wrapping dict are accepted too.
    wrapped = {"state_dict": {"module." + k: t for k, t in src.state_dict().items()}}
    assert NLSN.from_state_dict(wrapped).n_resblocks == n_resblocks


def test_from_state_dict_rejects_other_checkpoints():
    with pytest.raises(ValueError, match="not an NLSN state_dict"):
        NLSN.from_state_dict({"conv.weight": torch.zeros(3, 3, 3, 3)})
    sd = NLSN(2, n_feats=8, n_resblocks=8).state_dict()
    broken = dict(sd)
    del broken["body.9.conv_match.0.weight"]
    with pytest.raises(ValueError, match="missing keys body.9.conv_match.0.weight"):
        NLSN.from_state_dict(broken)
    broken = dict(sd, **{"body.3.body.2.weight": torch.zeros(8, 8, 1, 1)})
    with pytest.raises(ValueError, match="wrong shape"):
        NLSN.from_state_dict(broken)
    broken = dict(sd, **{"tail.0.0.weight": torch.zeros(20, 8, 3, 3)})
    with pytest.raises(ValueError, match="output channels"):
        NLSN.from_state_dict(broken)
    broken = dict(sd, **{"tail.0.foo.weight": torch.zeros(32, 8, 3, 3)})
    with pytest.raises(ValueError, match=r"upsampler keys must be 'tail.0.<index>.weight', got tail.0.foo.weight"):
        NLSN.from_state_dict(broken)
    # infer_config takes the same wrapped forms as from_state_dict.
    assert NLSN.infer_config({"model": {"module." + k: t for k, t in sd.items()}})["scale"] == 2


def _edsr_state_dict(n_feats=8, n_resblocks=8, scale=2):
    """An EDSR checkpoint: NLSN's head, residual blocks, tail and mean shifts, no NLSA blocks."""
    sd = NLSN(scale, n_feats=n_feats, n_resblocks=n_resblocks).state_dict()
    edsr, block = {}, 0
    for i in range(n_resblocks + 2 + (n_resblocks // 8)):
        if f"body.{i}.conv_match.0.weight" in sd:
            continue
        for k, t in sd.items():
            if k.startswith(f"body.{i}."):
                edsr[k.replace(f"body.{i}.", f"body.{block}.", 1)] = t
        block += 1
    edsr.update({k: t for k, t in sd.items() if not k.startswith("body.")})
    return edsr


@pytest.mark.parametrize("wrapper", ["params_ema", "params", "state_dict", "model", "model_state_dict"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_wrapped_and_prefixed_checkpoints(wrapper, prefix):
    """BasicSR's params / params_ema, EDSR-style state_dict / model wrappers, DataParallel's prefix."""
    torch.manual_seed(0)
    sd = NLSN(2, n_feats=8, n_resblocks=3).state_dict()
    wrapped = {wrapper: {prefix + k: t for k, t in sd.items()}, "epoch": 7}
    m = NLSN.from_state_dict(wrapped)
    assert all(torch.equal(m.state_dict()[k], t) for k, t in sd.items())
    assert NLSN.infer_config(wrapped)["n_resblocks"] == 3


def test_basicsr_checkpoint_loads_its_ema_weights():
    """BasicSR saves both; the EMA weights are the ones it evaluates and releases."""
    sd = NLSN(2, n_feats=8, n_resblocks=1).state_dict()
    ema = {k: t + 1 if t.is_floating_point() and "mean" not in k else t for k, t in sd.items()}
    m = NLSN.from_state_dict({"params": sd, "params_ema": ema})
    assert torch.equal(m.head[0].weight, ema["head.0.weight"])


def test_from_file_pt_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = NLSN(4, n_feats=8, n_resblocks=9, rgb_range=255)
    torch.save({"params_ema": src.state_dict()}, tmp_path / "x4.pth")
    save_file(src.state_dict(), tmp_path / "x4.safetensors")
    for name in ("x4.pth", "x4.safetensors"):
        m = NLSN.from_file(tmp_path / name, chunk_size=16, backend="torch")
        assert (m.scale, m.n_resblocks, m.rgb_range, m.chunk_size, m.backend) == (4, 9, 255, 16, "torch")
        assert all(torch.equal(m.state_dict()[k], t) for k, t in src.state_dict().items())


def test_from_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*nope.pt"):
        NLSN.from_file(tmp_path / "nope.pt")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="junk.safetensors is not a checkpoint: it is a file of another kind"):
        NLSN.from_file(junk)
    junk.write_bytes(b"\x06" + b"\x00" * 7 + b"{\"a\": ")  # a safetensors header, not valid JSON
    with pytest.raises(ValueError, match="cannot read .*junk.safetensors as a safetensors file"):
        NLSN.from_file(junk)
    edsr = tmp_path / "edsr.pt"
    torch.save(_edsr_state_dict(), edsr)
    with pytest.raises(ValueError, match=r"edsr.pt: not an NLSN state_dict .* missing keys body.0.conv_match.0.weight"):
        NLSN.from_file(edsr)


def test_detection_needs_nlsa_blocks():
    """is_nlsn_state_dict (spandrel's detection) keys on NLSA's conv_match / conv_assembly,
    so EDSR, whose keys NLSN shares otherwise, is not taken for NLSN."""
    for scale, n_resblocks in [(2, 1), (3, 8), (4, 32)]:
        assert is_nlsn_state_dict(NLSN(scale, n_feats=8, n_resblocks=n_resblocks).state_dict())
    assert not is_nlsn_state_dict(_edsr_state_dict())
    with pytest.raises(ValueError, match="missing keys body.0.conv_match.0.weight"):
        NLSN.from_state_dict(_edsr_state_dict())


def test_backend_is_shared_by_every_nlsa_block():
    m = NLSN(2, n_feats=8, n_resblocks=8, backend="torch")
    assert m.backend == "torch"
    m.backend = "auto"  # the same as set_backend
    assert {b.backend for b in m.attention_blocks} == {"auto"} and m.backend == "auto"
    m.attention_blocks[1].backend = "triton"
    with pytest.raises(ValueError, match=r"different backends \['auto', 'triton'\]; call set_backend"):
        _ = m.backend
    with pytest.raises(ValueError, match="backend must be one of"):
        m.set_backend("mixed")


def test_constructor_validation():
    with pytest.raises(ValueError, match="scale"):
        NLSN(5, n_feats=8)
    with pytest.raises(ValueError, match="divisible by 4"):
        NLSN(2, n_feats=10)
    with pytest.raises(ValueError, match="n_colors"):
        NLSN(2, n_feats=8, n_colors=1)
    with pytest.raises(ValueError, match="one entry per NLSA block"):
        NLSN(2, n_feats=8, n_resblocks=1)(torch.rand(1, 3, 4, 4), rotations=[None, None])


def _authors_forward(sd, x, rotations, n_hashes, chunk_size, res_scale, scale):
    """NLSN.forward as the authors' nlsn.py wires it, from the state_dict tensors: MeanShift,
    head, body (NLSA by nt.reference.nlsa with the given rotations: test_reference holds it
    to outputs of the authors' attention), global skip, tail."""
    conv = lambda t, name: F.conv2d(t, sd[name + ".weight"], sd[name + ".bias"],  # noqa: E731
                                    padding=sd[name + ".weight"].shape[-1] // 2)
    x = conv(conv(x, "sub_mean"), "head.0")
    res, i, rots = x, 0, iter(rotations)
    while f"body.{i}.weight" not in sd:
        if f"body.{i}.conv_match.0.weight" in sd:
            n, c, h, w = res.shape
            xe = conv(res, f"body.{i}.conv_match.0").flatten(2).transpose(1, 2)
            ye = conv(res, f"body.{i}.conv_assembly.0").flatten(2).transpose(1, 2)
            out = nt.reference.nlsa(xe, ye, n_hashes=n_hashes, chunk_size=chunk_size, rotations=next(rots))
            res = out.transpose(1, 2).reshape(n, c, h, w) * res_scale + res
        else:
            t = conv(F.relu(conv(res, f"body.{i}.body.0")), f"body.{i}.body.2")
            res = t * res_scale + res
        i += 1
    res = conv(res, f"body.{i}") + x
    k = 0
    while f"tail.0.{k}.weight" in sd:
        res = F.pixel_shuffle(conv(res, f"tail.0.{k}"), 3 if scale == 3 else 2)
        k += 2
    return conv(conv(res, "tail.1"), "add_mean")


def _tiny_model(scale=2, seed=0):
    torch.manual_seed(seed)
    return NLSN(scale, **TINY).eval()


def _rotations(model, generator):
    d, b = model.n_feats // 4, nt.num_buckets(H * W, model.chunk_size)
    return [nt.random_rotations(d, model.n_hashes, b, generator=generator) for _ in model.attention_blocks]


@pytest.mark.parametrize("scale", [2, 3])
def test_forward_matches_authors_network(scale):
    """The pure-torch backend with explicit rotations vs the authors' forward, independently wired."""
    m = _tiny_model(scale).set_backend("torch")
    x = torch.rand(2, 3, H, W)
    rot = _rotations(m, torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = m(x, rotations=rot)
        theirs = _authors_forward(m.state_dict(), x, rot, TINY["n_hashes"], TINY["chunk_size"], TINY["res_scale"],
                                  scale)
    assert ours.shape == (2, 3, scale * H, scale * W)
    assert_close("network output", ours, theirs, 1e-5)


def test_triton_backend_matches_reference_network(device):
    """The whole network on the Triton backend vs the reference backend: one seeded
    generator per run, so both draw the same rotations for each NLSA block, in body order."""
    m = _tiny_model().to(device)
    x = torch.rand(1, 3, H, W, device=device)
    with torch.no_grad():
        ref = m.set_backend("torch")(x, generator=torch.Generator(device).manual_seed(7))
        tri = m.set_backend("triton")(x, generator=torch.Generator(device).manual_seed(7))
        other_seed = m.set_backend("torch")(x, generator=torch.Generator(device).manual_seed(8))
        # The same rotations, given explicitly, give the same output.
        explicit = m.set_backend("torch")(x, rotations=_rotations(m, torch.Generator(device).manual_seed(7)))
    assert torch.isfinite(tri).all()
    assert_close("triton network output", tri, ref, 1e-5)
    assert torch.equal(explicit, ref)
    # The check is sensitive: another hash changes the output far beyond that tolerance.
    assert rel_err(other_seed, ref) > 1e-3


# L = 120 fills 5 chunks of 24 exactly; L = 20 is one chunk; L = 25 and 63 pad the sorted
# rows to 2 and 3 chunks, and those padding rows are computed too.
@pytest.mark.parametrize("scale,h,w", [(4, 10, 12), (3, 4, 5), (2, 5, 5), (2, 7, 9)])
def test_flops_match_torch_flop_counter(scale, h, w):
    """The analytic count against FlopCounterMode on the reference backend, whose convs are
    aten.convolution and whose hash and chunked attention are einsums (aten.bmm)."""
    from torch.utils.flop_counter import FlopCounterMode

    m = NLSN(scale, n_feats=16, n_resblocks=9, chunk_size=24, backend="reference")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        m(torch.rand(2, 3, h, w))
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    flops = m.flops(h, w, batch=2)
    assert flops["conv"] == counts.pop("aten.convolution")
    assert flops["attention"] == counts.pop("aten.bmm")
    assert counts == {} and flops["total"] == flops["conv"] + flops["attention"]


# Inference (no autograd graph) runs the residual adds in place and, on the CPU, the tail
# in strips of rows (models/strips.py): the same bits as the autograd path.


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_inference_path_gives_the_autograd_paths_bits(scale, monkeypatch):
    from nlsa_triton.models import strips

    torch.manual_seed(scale)
    m = NLSN(scale, n_feats=16, n_resblocks=8, chunk_size=24, n_hashes=2).set_backend("torch")
    x = torch.rand(1, 3, 96, 64)
    x0 = x.clone()
    trained = m(x, generator=torch.Generator().manual_seed(5))  # parameters require grad
    assert trained.requires_grad
    trained.sum().backward()  # the autograd path still trains
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    ran = []
    run = strips.run_in_strips
    monkeypatch.setattr(strips, "STRIP_BYTES", 2 ** 20)  # strips on a small map too
    monkeypatch.setattr("nlsa_triton.models.nlsn.run_in_strips",
                        lambda *a, **k: ran.append(run(*a, **k) is not None) or run(*a, **k))
    with torch.no_grad():
        inferred = m(x, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        inferred_im = m(x, generator=torch.Generator().manual_seed(5))
    assert ran == [True, True]  # in strips, both times
    assert torch.equal(x, x0)  # the input is never written
    assert torch.equal(inferred, trained.detach()) and torch.equal(inferred_im, inferred)


@pytest.mark.parametrize("scale,h,w", [(2, 37, 64), (3, 30, 50), (4, 60, 40), (2, 9, 300)])
@pytest.mark.parametrize("strip_bytes", [1, 2 ** 20])
def test_tail_in_strips_equals_the_whole_tail(scale, h, w, strip_bytes):
    """Strips down to MIN_STRIP_ROWS rows (strip_bytes 1), borders and unequal last strips
    included, against the tail on the whole map, bit for bit."""
    from nlsa_triton.models.strips import MIN_STRIP_ROWS, run_in_strips

    torch.manual_seed(0)
    m = NLSN(scale, n_feats=32, n_resblocks=1)
    feats = torch.randn(2, 32, h, w)
    with torch.no_grad():
        whole = m.tail(feats)
        out = run_in_strips(m.tail, feats, strip_bytes)
        assert run_in_strips(m.tail, feats[:, :, :MIN_STRIP_ROWS], strip_bytes) is None  # one strip: no-op
    assert out is not None and torch.equal(out, whole)


def test_tail_in_strips_steps_aside():
    """A tail with forward hooks, or with another kind of layer, runs as a whole."""
    from nlsa_triton.models.strips import run_in_strips, tail_layers

    m = NLSN(2, n_feats=8, n_resblocks=1)
    assert [type(t).__name__ for t in tail_layers(m.tail)] == ["Conv2d", "PixelShuffle", "Conv2d"]
    handle = m.tail[1].register_forward_hook(lambda *a: None)
    assert tail_layers(m.tail) is None and run_in_strips(m.tail, torch.rand(1, 8, 64, 8), 1) is None
    handle.remove()
    m.tail.append(torch.nn.ReLU())
    assert tail_layers(m.tail) is None


def test_attention_block_in_place_step_gives_the_same_bits():
    """NonLocalSparseAttention without a graph (in place) vs with one (out of place):
    the same values and the same (channels-last) strides; the input is left alone."""
    torch.manual_seed(4)
    block = nt.NonLocalSparseAttention(channels=16, n_hashes=2, chunk_size=24, res_scale=0.1, backend="torch")
    inp = torch.randn(1, 16, 12, 15)
    inp0 = inp.clone()
    rot = nt.random_rotations(4, 2, nt.num_buckets(180, 24))
    with_graph = block(inp, rot)
    with torch.no_grad():
        without = block(inp, rot)
    assert with_graph.requires_grad and torch.equal(inp, inp0)
    assert torch.equal(without, with_graph.detach()) and without.stride() == with_graph.stride()
