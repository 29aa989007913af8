"""NLSN in spandrel: registration, detection from files, a foreign checkpoint refused, the
same output as NLSN.from_state_dict, and the half-precision support the descriptor declares.

spandrel imports ``torchvision.transforms.functional`` when it is imported, for two of its
architectures (LaMa's ``rotate``/``InterpolationMode`` and RestoreFormer's ``normalize``),
and calls it only when those models run. PyPI has no torchvision that loads beside the
CPU build of torch 2.13.0 (its x86_64 wheels link torch's CUDA libraries), so the CI
installs spandrel without it (README: "The spandrel test"). Where torchvision cannot be
imported, ``torchvision_stand_in`` answers that one import while spandrel is imported,
with names that raise if anything calls them, and removes itself from ``sys.modules``
right after. Nothing here runs LaMa or RestoreFormer; with a working torchvision the real
one is used.
"""
import contextlib
import sys
import types

import pytest
import torch

from nlsa_triton.models import NLSN

TORCHVISION_MODULES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


STAND_IN_DOC = "test stand-in: torchvision cannot be imported here"


def _unavailable_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name, STAND_IN_DOC)

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{name}.{attr} was called, but only a test stand-in for torchvision is loaded")

        return unavailable

    module.__getattr__ = __getattr__
    return module


@contextlib.contextmanager
def torchvision_stand_in():
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:  # not installed, or a build for another torch ("operator torchvision::nms does not exist")
        saved = {name: sys.modules.get(name) for name in TORCHVISION_MODULES}
        sys.modules.update({name: _unavailable_module(name) for name in TORCHVISION_MODULES})
        try:
            yield
        finally:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module
    else:
        yield


with torchvision_stand_in():
    import spandrel

from nlsa_triton.integrations import spandrel as nlsn_spandrel  # noqa: E402

# A tiny NLSN: 8 features, 2 residual blocks, one NLSA block (chunk 144 > 12 x 10 pixels).
CONFIG = dict(n_feats=8, n_resblocks=2)
# spandrel tries a .pt file as TorchScript first, which torch 2.13 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def registered():
    return nlsn_spandrel.register()


def _state_dict(scale=2, rgb_range=1, seed=0):
    torch.manual_seed(seed)
    return NLSN(scale, rgb_range=rgb_range, **CONFIG).state_dict()


def _edsr_state_dict():
    """EDSR's layout: NLSN's head, residual blocks, tail and mean shifts, no NLSA blocks."""
    sd = _state_dict()
    body = [k for k in sd if k.startswith("body.") and ".conv_" not in k]
    blocks = sorted({int(k.split(".")[1]) for k in body})
    renumber = {old: new for new, old in enumerate(blocks)}
    edsr = {k: t for k, t in sd.items() if not k.startswith("body.")}
    for k in body:
        _, i, rest = k.split(".", 2)
        edsr[f"body.{renumber[int(i)]}.{rest}"] = sd[k]
    return edsr


def test_the_stand_in_is_gone_after_spandrel_is_imported():
    assert all(getattr(sys.modules.get(name), "__doc__", None) != STAND_IN_DOC for name in TORCHVISION_MODULES)


def test_register_adds_nlsn_once(registered):
    assert spandrel.MAIN_REGISTRY.get("NLSN") is registered
    count = len(spandrel.MAIN_REGISTRY)
    assert nlsn_spandrel.register() is registered and len(spandrel.MAIN_REGISTRY) == count
    own = spandrel.ArchRegistry()
    assert nlsn_spandrel.register(own).architecture.id == "NLSN"
    assert [a.architecture.id for a in own.architectures("insertion")] == ["NLSN:EDSR-without-NLSA", "NLSN"]


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("form", ["bare.pt", "basicsr.pth", "dataparallel.pth", "bare.safetensors"])
def test_load_from_file_detects_nlsn(tmp_path, scale, form):
    sd = _state_dict(scale)
    path = tmp_path / f"NLSN_x{scale}_{form}"
    if form == "bare.safetensors":
        from safetensors.torch import save_file

        save_file(sd, path)
    else:
        stored = {"bare.pt": sd, "basicsr.pth": {"params_ema": sd},
                  "dataparallel.pth": {"state_dict": {"module." + k: t for k, t in sd.items()}}}[form]
        torch.save(stored, path)
    model = spandrel.ModelLoader().load_from_file(path)
    assert isinstance(model, spandrel.ImageModelDescriptor) and isinstance(model.model, NLSN)
    assert model.architecture.id == "NLSN" and model.purpose == "SR" and model.scale == scale
    assert (model.input_channels, model.output_channels) == (3, 3)
    assert model.tiling == spandrel.ModelTiling.DISCOURAGED
    assert model.supports_half and model.supports_bfloat16
    assert model.tags == ["8nf", "2nb"]
    assert all(torch.equal(model.model.state_dict()[k], t) for k, t in sd.items())


def test_foreign_checkpoints_are_not_taken_for_nlsn(tmp_path):
    """EDSR shares every key of NLSN but the NLSA blocks': spandrel (which has no EDSR)
    refuses it with a message that says so, and NLSN.from_state_dict names the missing NLSA keys."""
    edsr = _edsr_state_dict()
    torch.save(edsr, tmp_path / "EDSR_x2.pt")
    assert not nlsn_spandrel.NLSNArch().detect(edsr)
    with pytest.raises(spandrel.UnsupportedModelError, match="an EDSR checkpoint .* without an NLSA block"):
        spandrel.ModelLoader().load_from_file(tmp_path / "EDSR_x2.pt")
    with pytest.raises(spandrel.UnsupportedModelError, match="^$"):  # anything else: spandrel's own error
        spandrel.ModelLoader().load_from_state_dict({"conv.weight": torch.zeros(1, 1, 1, 1)})
    with pytest.raises(ValueError, match="missing keys body.0.conv_match.0.weight"):
        NLSN.from_state_dict(edsr)
    # A model spandrel knows keeps its own architecture with NLSN registered.
    from spandrel.architectures.Compact import Compact

    compact = Compact(num_feat=8, num_conv=2, upscale=2).state_dict()
    assert spandrel.ModelLoader().load_from_state_dict(compact).architecture.id == "Compact"


@pytest.mark.parametrize("rgb_range", [1, 255])
def test_output_equals_nlsn_from_state_dict(rgb_range):
    """spandrel's [0, 1] images are scaled to the checkpoint's rgb_range and back; with the
    global generator seeded alike, the descriptor's output is NLSN's, clamped as spandrel does."""
    sd = _state_dict(rgb_range=rgb_range)
    model = spandrel.ModelLoader().load_from_state_dict(sd).eval()
    image = torch.rand(1, 3, 10, 12)
    torch.manual_seed(1)
    ours = model(image)
    nlsn = NLSN.from_state_dict(sd).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        expected = (nlsn(image * rgb_range) / rgb_range).clamp(0, 1)
    assert ours.shape == (1, 3, 20, 24)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("dtype,levels", [(torch.float16, 0.5), (torch.bfloat16, 2.0)])
@pytest.mark.parametrize("rgb_range", [1, 255])
def test_declared_half_precision_support_holds(dtype, levels, rgb_range):
    """supports_half / supports_bfloat16: the half-precision output stays within `levels`
    8-bit levels of float32's (on the CPU float16 runs the Triton kernels in the interpreter,
    bfloat16 the torch path)."""
    sd = _state_dict(rgb_range=rgb_range)
    image = torch.rand(1, 3, 10, 12)
    torch.manual_seed(1)
    full = spandrel.ModelLoader().load_from_state_dict(sd).eval()(image)
    half = spandrel.ModelLoader().load_from_state_dict(sd).to(dtype).eval()
    torch.manual_seed(1)
    out = half(image.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - full).abs().max().item() * 255 <= levels


def test_a_missing_spandrel_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "spandrel", None)  # `from spandrel import ...` raises ImportError
    monkeypatch.delitem(sys.modules, "nlsa_triton.integrations.spandrel")
    with pytest.raises(ImportError, match=r"needs spandrel.*docs/spandrel.md gives the install commands"):
        import nlsa_triton.integrations.spandrel  # noqa: F401
