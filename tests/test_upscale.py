"""The upscaling CLI end to end on small images with tiny random NLSN checkpoints."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nlsa_triton import upscale
from nlsa_triton.models import NLSN

ROOT = Path(__file__).resolve().parents[1]
LR_W, LR_H = 11, 9


def _checkpoint(path, scale=2, rgb_range=1, seed=0, **kw):
    torch.manual_seed(seed)
    config = dict(n_feats=8, n_resblocks=2, chunk_size=16, rgb_range=rgb_range, **kw)
    torch.save(NLSN(scale, **config).state_dict(), path)
    return path


def _image(path, w=LR_W, h=LR_H, mode="RGB", fmt=None):
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    Image.fromarray(array[..., 0] if channels == 1 else array).save(path, format=fmt)
    return path


def _run(argv, capsys):
    code = upscale.main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture
def files(tmp_path):
    return dict(
        png=_image(tmp_path / "in.png"),
        weights=_checkpoint(tmp_path / "x2.pt"),
        out=tmp_path / "out.png",
        tmp=tmp_path,
    )


def _read(path):
    with Image.open(path) as img:
        return img.format, img.mode, np.asarray(img)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_is_scale_times_input(tmp_path, capsys, scale):
    weights = _checkpoint(tmp_path / f"x{scale}.pt", scale=scale)
    src = _image(tmp_path / "in.png")
    out = tmp_path / "out.png"
    code, err = _run([src, out, "--weights", weights, "--seed", 1, "--backend", "torch", "--chunk-size", 16], capsys)
    assert code == 0, err
    fmt, mode, pixels = _read(out)
    assert (fmt, mode, pixels.shape) == ("PNG", "RGB", (scale * LR_H, scale * LR_W, 3))
    assert f"x{scale}" in err


def test_seed_is_reproducible_and_matters(files, capsys):
    outs = []
    for i, seed in enumerate([5, 5, 6]):
        out = files["tmp"] / f"o{i}.png"
        code, err = _run([files["png"], out, "--weights", files["weights"], "--seed", seed, "--backend", "torch",
                          "--chunk-size", 4, "--res-scale", 1, "--quiet"], capsys)
        assert code == 0, err
        outs.append(_read(out)[2])
    assert np.array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_matches_model_forward(files, capsys):
    """The CLI's pixels are the model's output on [0, rgb_range] input, quantised as EDSR."""
    code, err = _run([files["png"], files["out"], "--weights", files["weights"], "--seed", 3,
                      "--backend", "torch", "--chunk-size", 16], capsys)
    assert code == 0, err
    model = NLSN.from_state_dict(torch.load(files["weights"]), chunk_size=16, backend="torch").eval()
    lr = torch.from_numpy(_read(files["png"])[2].astype(np.float32)).permute(2, 0, 1)[None] / 255
    with torch.no_grad():
        sr = model(lr, generator=torch.Generator().manual_seed(3))
    expected = (sr[0] * 255).clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(_read(files["out"])[2], expected)


def test_rgb_range_read_from_checkpoint_and_overridable(tmp_path, capsys):
    weights = _checkpoint(tmp_path / "r255.pt", rgb_range=255)
    src, out = _image(tmp_path / "in.png"), tmp_path / "out.png"
    code, err = _run([src, out, "--weights", weights, "--backend", "torch"], capsys)
    assert code == 0 and "rgb_range 255" in err
    code, err = _run([src, out, "--weights", weights, "--backend", "torch", "--rgb-range", 1], capsys)
    assert code == 0 and "warning: --rgb-range 1 differs" in err and "rgb_range 1," in err


def test_tiles_equal_whole_image_when_attention_is_identity(tmp_path, capsys):
    """With zero assembly convs every NLSA block is the identity and NLSN is a plain CNN
    (receptive field 1 + 2 * 2 + 1 + 1 + 1 = 8 LR pixels): tiles with a margin of 10
    reproduce the whole-image result, which checks the tile placement and cropping."""
    torch.manual_seed(0)
    m = NLSN(3, n_feats=8, n_resblocks=2, chunk_size=16)
    sd = m.state_dict()
    for k in sd:
        if "conv_assembly" in k:
            sd[k].zero_()
    weights = tmp_path / "cnn.pt"
    torch.save(sd, weights)
    src = _image(tmp_path / "in.png", w=23, h=17)
    whole, tiled = tmp_path / "whole.png", tmp_path / "tiled.png"
    assert _run([src, whole, "--weights", weights, "--backend", "torch"], capsys)[0] == 0
    code, err = _run([src, tiled, "--weights", weights, "--backend", "torch", "--tile", 8], capsys)
    assert code == 0, err
    assert "tiles [" in err and "9/9" in err  # 3 x 3 tiles, progress on stderr
    a, b = _read(whole)[2].astype(int), _read(tiled)[2].astype(int)
    assert a.shape == b.shape == (51, 69, 3)
    assert np.abs(a - b).max() <= 1  # equal up to float rounding at a .5 boundary


def test_upscale_tensor_tiles_without_overlap_differ(files):
    """Overlap 0 cuts the receptive field at tile borders: a sanity check of the test above."""
    model = NLSN.from_state_dict(torch.load(files["weights"]), chunk_size=16, backend="torch").eval()
    lr = torch.rand(1, 3, 12, 12)
    whole = upscale.upscale_tensor(model, lr, generator=torch.Generator().manual_seed(0))
    tiled = upscale.upscale_tensor(model, lr, tile=6, overlap=0, generator=torch.Generator().manual_seed(0))
    assert whole.shape == tiled.shape == (1, 3, 24, 24)
    assert not torch.allclose(whole, tiled)


def test_oom_falls_back_to_tiles(files, monkeypatch, capsys):
    model = NLSN.from_state_dict(torch.load(files["weights"]), chunk_size=16, backend="torch").eval()
    real_forward = model.forward

    limit = [16 * 16]

    def forward(x, **kw):  # "out of memory" for inputs above `limit` pixels
        if x.shape[-1] * x.shape[-2] > limit[0]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return real_forward(x, **kw)

    monkeypatch.setattr(model, "forward", forward)
    lr = torch.rand(1, 3, 40, 40)
    sr = upscale.upscale_with_fallback(model, lr, tile=None, overlap=0, seed=0, progress=True)
    err = capsys.readouterr().err
    assert sr.shape == (1, 3, 80, 80)
    assert "retrying in tiles of 32" in err and "retrying in tiles of 16" in err and "tiles [" in err
    expected = upscale.upscale_tensor(model, lr, tile=16, overlap=0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sr, expected)  # the retry starts from a freshly seeded generator
    limit[0] = 0
    with pytest.raises(upscale.UpscaleError, match="out of memory on cpu even in tiles of 16 x 16 pixels"):
        upscale.upscale_with_fallback(model, lr, tile=None, overlap=0, seed=0, progress=False)
    with pytest.raises(upscale.UpscaleError, match="even in tiles of 12 x 12 pixels"):  # the last size tried
        upscale.upscale_with_fallback(model, lr, tile=12, overlap=0, seed=0, progress=False)


CPU_OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes."


def test_cpu_allocator_oom_falls_back_to_tiles(files, monkeypatch, capsys):
    """torch's CPU allocator raises a plain RuntimeError, not torch.OutOfMemoryError."""
    model = NLSN.from_state_dict(torch.load(files["weights"]), chunk_size=16, backend="torch").eval()
    real_forward = model.forward

    def forward(x, **kw):
        if x.shape[-1] * x.shape[-2] > 16 * 16:
            raise RuntimeError(CPU_OOM)
        return real_forward(x, **kw)

    monkeypatch.setattr(model, "forward", forward)
    lr = torch.rand(1, 3, 40, 40)
    sr = upscale.upscale_with_fallback(model, lr, tile=None, overlap=0, seed=0, progress=False)
    assert "retrying in tiles of 16" in capsys.readouterr().err
    expected = upscale.upscale_tensor(model, lr, tile=16, overlap=0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sr, expected)


def test_oom_that_survives_the_fallback_is_a_clear_error(files, monkeypatch, capsys):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(upscale, "upscale_tensor", out_of_memory)
    code, err = _run([files["png"], files["out"], "--weights", files["weights"], "--backend", "torch",
                      "--tile", 20], capsys)
    assert code == 1 and "error: out of memory on cpu even in tiles of 16 x 16 pixels" in err
    assert "Traceback" not in err and not files["out"].exists()
    # An OOM outside the tiled runs (here: moving the weights to the device) is reported too.
    monkeypatch.setattr(NLSN, "to", out_of_memory)
    code, err = _run([files["png"], files["out"], "--weights", files["weights"], "--backend", "torch"], capsys)
    assert code == 1 and "error: out of memory on cpu: DefaultCPUAllocator: can't allocate memory" in err


def test_auto_backend_runs_the_triton_path(files, capsys, monkeypatch):
    """Under TRITON_INTERPRET=1 (no GPU) or on CUDA, backend auto is the Triton kernels."""
    from nlsa_triton import _ops

    calls = []
    kernel_attention = _ops.chunked_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return kernel_attention(*args, **kwargs)

    monkeypatch.setattr(_ops, "chunked_attention", counted)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    code, err = _run([files["png"], files["out"], "--weights", files["weights"], "--seed", 0,
                      "--device", device, "--chunk-size", 16], capsys)
    assert code == 0, err
    assert "NLSA backend triton" in err
    n_attention = len(NLSN.from_state_dict(torch.load(files["weights"])).attention_blocks)
    assert len(calls) == n_attention  # every NLSA block ran the kernels, once
    assert _read(files["out"])[2].shape == (2 * LR_H, 2 * LR_W, 3)


def test_missing_output_folder(files, capsys):
    code, err = _run([files["png"], files["tmp"] / "no" / "out.png", "--weights", files["weights"]], capsys)
    assert code == 1 and "output folder does not exist" in err


def test_jpeg_and_other_modes(tmp_path, capsys):
    weights = _checkpoint(tmp_path / "w.pt")
    for name, mode, fmt in [("in.jpg", "RGB", "JPEG"), ("gray.png", "L", None), ("alpha.png", "RGBA", None)]:
        src = _image(tmp_path / name, mode=mode, fmt=fmt)
        out = tmp_path / (name + ".out.png")
        code, err = _run([src, out, "--weights", weights, "--backend", "torch"], capsys)
        assert code == 0, err
        assert _read(out)[2].shape == (2 * LR_H, 2 * LR_W, 3)


# -- errors ---------------------------------------------------------------------------------


def test_missing_input(files, capsys):
    code, err = _run([files["tmp"] / "nope.png", files["out"], "--weights", files["weights"]], capsys)
    assert code == 1 and "input image not found" in err and not files["out"].exists()


def test_missing_weights(files, capsys):
    code, err = _run([files["png"], files["out"], "--weights", files["tmp"] / "nope.pt"], capsys)
    assert code == 1 and "weights file not found" in err


def test_unreadable_image(files, capsys):
    bad = files["tmp"] / "bad.png"
    bad.write_text("this is not a PNG")
    code, err = _run([bad, files["out"], "--weights", files["weights"]], capsys)
    assert code == 1 and "cannot read" in err and "as an image" in err


def test_checkpoint_not_nlsn(files, capsys):
    other = files["tmp"] / "other.pt"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(4)}, other)
    code, err = _run([files["png"], files["out"], "--weights", other], capsys)
    assert code == 1 and "other.pt: not an NLSN state_dict" in err
    junk = files["tmp"] / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 10)
    code, err = _run([files["png"], files["out"], "--weights", junk], capsys)
    assert code == 1 and "cannot load" in err and "PyTorch checkpoint" in err


def test_scale_mismatch(files, capsys):
    code, err = _run([files["png"], files["out"], "--weights", files["weights"], "--scale", 4], capsys)
    assert code == 1 and "--scale 4 does not match the checkpoint, which is x2" in err


def test_bad_arguments_exit_2(files, capsys):
    with pytest.raises(SystemExit) as e:
        upscale.main([str(files["png"]), str(files["out"]), "--weights", str(files["weights"]), "--tile", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        upscale.main([str(files["png"]), str(files["out"])])  # --weights is required
    assert e.value.code == 2


def test_missing_pillow_is_a_clear_error(files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import ...` raise ImportError
    code, err = _run([files["png"], files["out"], "--weights", files["weights"]], capsys)
    assert code == 1 and "needs Pillow" in err and "nlsa-triton[cli]" in err


def test_python_dash_m(files):
    """`python -m nlsa_triton.upscale` in a subprocess: success, then a failure's exit status."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "nlsa_triton.upscale", str(files["png"]), str(files["out"]),
           "--weights", str(files["weights"]), "--backend", "torch", "--seed", "0", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _read(files["out"])[2].shape == (2 * LR_H, 2 * LR_W, 3)
    cmd[3] = str(files["tmp"] / "missing.png")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and "error: input image not found" in done.stderr
