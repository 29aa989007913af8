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
from nlsa_triton.upscale import images, tiling

ROOT = Path(__file__).resolve().parents[1]
LR_W, LR_H = 11, 9
TORCH = ["--backend", "torch"]  # the pure-torch NLSA path: no Triton interpreter, fast on the CPU


def _checkpoint(path, scale=2, rgb_range=1, seed=0, **kw):
    torch.manual_seed(seed)
    config = dict(n_feats=8, n_resblocks=2, chunk_size=16, rgb_range=rgb_range, **kw)
    torch.save(NLSN(scale, **config).state_dict(), path)
    return path


def _image(path, w=LR_W, h=LR_H, mode="RGB", fmt=None, seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    Image.fromarray(array[..., 0] if channels == 1 else array).save(path, format=fmt)
    return path


def _run(argv, capsys):
    """The exit status and everything printed (results on stdout, then stderr)."""
    code, out, err = _run_streams(argv, capsys)
    return code, out + err


def _run_streams(argv, capsys):
    code = upscale.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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


def _expected_pixels(weights, png, seed, size=None):
    """The model's output on [0, 1] input, optionally resized, quantised as EDSR."""
    model = NLSN.from_file(weights, backend="torch").eval()
    lr = torch.from_numpy(_read(png)[2].astype(np.float32)).permute(2, 0, 1)[None] / 255
    with torch.no_grad():
        sr = model(lr, generator=torch.Generator().manual_seed(seed))
    if size is not None:
        sr = upscale.resize(sr, *size)
    return (sr[0] * 255).clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_is_scale_times_input(tmp_path, capsys, scale):
    weights = _checkpoint(tmp_path / f"x{scale}.pt", scale=scale)
    src = _image(tmp_path / "in.png")
    out = tmp_path / "out.png"
    code, err = _run([src, out, "--weights", weights, "--seed", 1, *TORCH, "--chunk-size", 16], capsys)
    assert code == 0, err
    fmt, mode, pixels = _read(out)
    assert (fmt, mode, pixels.shape) == ("PNG", "RGB", (scale * LR_H, scale * LR_W, 3))
    assert f"NLSN x{scale}" in err


def test_seed_is_reproducible_and_matters(files, capsys):
    outs = []
    for i, seed in enumerate([5, 5, 6]):
        out = files["tmp"] / f"o{i}.png"
        code, err = _run([files["png"], out, "--weights", files["weights"], "--seed", seed, *TORCH,
                          "--chunk-size", 4, "--res-scale", 1, "--quiet"], capsys)
        assert code == 0, err
        outs.append(_read(out)[2])
    assert np.array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_matches_model_forward(files, capsys):
    """The CLI's pixels are the model's output on [0, rgb_range] input, quantised as EDSR."""
    code, err = _run([files["png"], files["out"], "--weights", files["weights"], "--seed", 3, *TORCH], capsys)
    assert code == 0, err
    assert np.array_equal(_read(files["out"])[2], _expected_pixels(files["weights"], files["png"], 3))


@pytest.mark.parametrize("outscale,size", [(3, (27, 33)), (1.5, (14, 17))])
def test_outscale_resizes_the_network_output(files, capsys, outscale, size):
    """--outscale: the x2 network's output, resized (bicubic, antialiased) to round(outscale * size)."""
    code, err = _run([files["png"], files["out"], "--weights", files["weights"], "--seed", 3, *TORCH,
                      "--outscale", outscale], capsys)
    assert code == 0, err
    pixels = _read(files["out"])[2]
    assert pixels.shape == (*size, 3) and f"({size[1]}x{size[0]})" in err
    assert np.array_equal(pixels, _expected_pixels(files["weights"], files["png"], 3, size))


def test_rgb_range_read_from_checkpoint_and_overridable(tmp_path, capsys):
    weights = _checkpoint(tmp_path / "r255.pt", rgb_range=255)
    src, out = _image(tmp_path / "in.png"), tmp_path / "out.png"
    code, err = _run([src, out, "--weights", weights, *TORCH], capsys)
    assert code == 0 and "rgb_range 255" in err
    code, err = _run([src, out, "--weights", weights, *TORCH, "--rgb-range", 1], capsys)
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
    assert _run([src, whole, "--weights", weights, *TORCH], capsys)[0] == 0
    code, err = _run([src, tiled, "--weights", weights, *TORCH, "--tile", 8], capsys)
    assert code == 0, err
    a, b = _read(whole)[2].astype(int), _read(tiled)[2].astype(int)
    assert a.shape == b.shape == (51, 69, 3)
    assert np.abs(a - b).max() <= 1  # equal up to float rounding at a .5 boundary


def test_upscale_tensor_tiles_without_overlap_differ(files):
    """Padding 0 cuts the receptive field at tile borders: a sanity check of the test above."""
    model = NLSN.from_file(files["weights"], chunk_size=16, backend="torch").eval()
    lr = torch.rand(1, 3, 12, 12)
    whole = upscale.upscale_tensor(model, lr, generator=torch.Generator().manual_seed(0))
    tiled = upscale.upscale_tensor(model, lr, tile=6, tile_pad=0, generator=torch.Generator().manual_seed(0))
    assert whole.shape == tiled.shape == (1, 3, 24, 24)
    assert not torch.allclose(whole, tiled)


def test_progress_bars_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    """tqdm bars over images and over an image's stages when stderr is a terminal; none with
    --quiet or when it is not (a log file). Results go to stdout, the rest to stderr."""
    weights = _checkpoint(tmp_path / "w.pt")
    folder = tmp_path / "lr"
    folder.mkdir()
    for i in range(2):
        _image(folder / f"{i}.png", seed=i)
    argv = ["-i", folder, "-o", tmp_path / "sr", "--weights", weights, *TORCH, "--tile", 5]
    code, out, err = _run_streams(argv, capsys)
    assert code == 0 and "images:" not in err and "stage" not in err
    assert out.count(" -> ") == 2 and " -> " not in err
    assert out.strip().splitlines()[-1].startswith("2 files in ")
    assert err.startswith("NLSN x2") and len(err.splitlines()) == 1  # the one diagnostic line
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = _run_streams(argv, capsys)
    # 2 x 3 tiles of 5 px, each through NLSN's 4 body modules and the tail: 30 stages
    assert code == 0 and "images: 100%" in err and "2/2" in err and "(6 tiles)" in err and "/30" in err
    code, out, err = _run_streams([*argv, "--quiet"], capsys)
    assert code == 0 and out == err == ""


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    """Off a terminal, a line now and then (here every time: LINE_EVERY_S = 0) counting the
    network's stages, which a forward hook per body module reports."""
    monkeypatch.setattr(upscale.progress, "LINE_EVERY_S", 0.0)
    weights = _checkpoint(tmp_path / "w.pt")
    src = _image(tmp_path / "in.png")
    code, out, err = _run_streams([src, tmp_path / "o.png", "--weights", weights, *TORCH], capsys)
    assert code == 0, err
    stages = [line for line in err.splitlines() if " stages (" in line]
    n_body = len(NLSN.from_file(weights).body)  # 4: NLSA, 2 residual blocks, the conv
    assert [line.split(": ")[1].split(" ")[0] for line in stages] == [f"{i}/{n_body + 1}" for i in range(1, n_body + 1)]
    assert stages[0].startswith(f"{src}: 1/{n_body + 1} stages (")
    assert out.count(" -> ") == 1 and "stages" not in out


def test_oom_falls_back_to_tiles(files, monkeypatch, capsys):
    model = NLSN.from_file(files["weights"], chunk_size=16, backend="torch").eval()
    real_forward = model.forward

    limit = [16 * 16]

    def forward(x, **kw):  # "out of memory" for inputs above `limit` pixels
        if x.shape[-1] * x.shape[-2] > limit[0]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return real_forward(x, **kw)

    monkeypatch.setattr(model, "forward", forward)
    lr = torch.rand(1, 3, 40, 40)
    sr = upscale.upscale_with_fallback(model, lr, tile=None, tile_pad=0, seed=0)
    err = capsys.readouterr().err
    assert sr.shape == (1, 3, 80, 80)
    assert "retrying in tiles of 32" in err and "retrying in tiles of 16" in err
    expected = upscale.upscale_tensor(model, lr, tile=16, tile_pad=0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sr, expected)  # the retry starts from a freshly seeded generator
    limit[0] = 0
    with pytest.raises(upscale.UpscaleError, match="out of memory on cpu even in tiles of 16 x 16 pixels"):
        upscale.upscale_with_fallback(model, lr, tile=None, tile_pad=0, seed=0)
    with pytest.raises(upscale.UpscaleError, match="even in tiles of 12 x 12 pixels"):  # the last size tried
        upscale.upscale_with_fallback(model, lr, tile=12, tile_pad=0, seed=0)


CPU_OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes."


def test_cpu_allocator_oom_falls_back_to_tiles(files, monkeypatch, capsys):
    """torch's CPU allocator raises a plain RuntimeError, not torch.OutOfMemoryError."""
    model = NLSN.from_file(files["weights"], chunk_size=16, backend="torch").eval()
    real_forward = model.forward

    def forward(x, **kw):
        if x.shape[-1] * x.shape[-2] > 16 * 16:
            raise RuntimeError(CPU_OOM)
        return real_forward(x, **kw)

    monkeypatch.setattr(model, "forward", forward)
    lr = torch.rand(1, 3, 40, 40)
    sr = upscale.upscale_with_fallback(model, lr, tile=None, tile_pad=0, seed=0)
    assert "retrying in tiles of 16" in capsys.readouterr().err
    expected = upscale.upscale_tensor(model, lr, tile=16, tile_pad=0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sr, expected)


def test_oom_that_survives_the_fallback_is_a_clear_error(files, monkeypatch, capsys):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(tiling, "upscale_tensor", out_of_memory)
    code, err = _run([files["png"], files["out"], "--weights", files["weights"], *TORCH, "--tile", 20], capsys)
    assert code == 1 and f"error: {files['png']}: out of memory on cpu even in tiles of 16 x 16 pixels" in err
    assert "Traceback" not in err and not files["out"].exists()
    # An OOM outside the tiled runs (here: moving the weights to the device) is reported too.
    monkeypatch.setattr(NLSN, "to", out_of_memory)
    code, err = _run([files["png"], files["out"], "--weights", files["weights"], *TORCH], capsys)
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
    n_attention = len(NLSN.from_file(files["weights"]).attention_blocks)
    assert len(calls) == n_attention  # every NLSA block ran the kernels, once
    assert _read(files["out"])[2].shape == (2 * LR_H, 2 * LR_W, 3)


def test_jpeg_webp_bmp_and_other_modes(tmp_path, capsys):
    weights = _checkpoint(tmp_path / "w.pt")
    for name, mode, fmt in [("in.jpg", "RGB", "JPEG"), ("in.webp", "RGB", "WEBP"), ("in.bmp", "RGB", "BMP"),
                            ("gray.png", "L", None), ("alpha.png", "RGBA", None), ("in.tif", "RGB", "TIFF")]:
        src = _image(tmp_path / name, mode=mode, fmt=fmt)
        out = tmp_path / ("out_" + name)
        code, err = _run([src, out, "--weights", weights, *TORCH], capsys)
        assert code == 0, err
        assert _read(out)[1] == mode and _read(out)[2].shape[:2] == (2 * LR_H, 2 * LR_W)


def test_safetensors_checkpoint(files, capsys):
    from safetensors.torch import save_file

    weights = files["tmp"] / "x2.safetensors"
    save_file(torch.load(files["weights"]), weights)
    code, err = _run([files["png"], files["out"], "--weights", weights, "--seed", 3, *TORCH], capsys)
    assert code == 0, err
    assert np.array_equal(_read(files["out"])[2], _expected_pixels(files["weights"], files["png"], 3))


# -- folders ----------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    """Four readable images of four formats, one corrupt PNG and a text file (ignored)."""
    lr = tmp_path / "lr"
    lr.mkdir()
    for i, (name, fmt) in enumerate([("a.png", "PNG"), ("b.jpg", "JPEG"), ("c.webp", "WEBP"), ("d.bmp", "BMP")]):
        _image(lr / name, fmt=fmt, seed=i)
    (lr / "broken.png").write_bytes(b"not a PNG")
    (lr / "notes.txt").write_text("not an image")
    return lr


def test_folder_run_goes_past_an_unreadable_image(folder, tmp_path, capsys):
    weights = _checkpoint(tmp_path / "w.pt")
    (folder / "sub").mkdir()  # not read, but counted
    _image(folder / "sub" / "e.png")
    out = tmp_path / "sr"  # created by the run
    code, err = _run(["-i", folder, "-o", out, "--weights", weights, *TORCH, "--seed", 0], capsys)
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_out.png", "b_out.jpg", "c_out.webp", "d_out.bmp"]
    for name, fmt in [("a_out.png", "PNG"), ("b_out.jpg", "JPEG"), ("c_out.webp", "WEBP"), ("d_out.bmp", "BMP")]:
        assert _read(out / name)[:2] == (fmt, "RGB") and _read(out / name)[2].shape == (2 * LR_H, 2 * LR_W, 3)
    assert f"error: cannot read {folder / 'broken.png'} as an image" in err
    summary = [line for line in err.splitlines() if " files in " in line]
    assert len(summary) == 1 and summary[0].startswith("7 files in ")
    assert summary[0].endswith(f"s: 4 upscaled, 2 skipped (not an image extension: notes.txt; a subfolder: sub), "
                               f"1 failed ({folder / 'broken.png'})")


def test_skip_existing_resumes_a_folder_run(folder, tmp_path, capsys):
    weights = _checkpoint(tmp_path / "w.pt")
    (folder / "broken.png").unlink()
    out = tmp_path / "sr"
    out.mkdir()
    (out / "a_out.png").write_bytes(b"kept")  # what an interrupted run had finished
    code, err = _run(["-i", folder, "-o", out, "--weights", weights, *TORCH, "--skip-existing"], capsys)
    assert code == 0, err
    assert (out / "a_out.png").read_bytes() == b"kept"
    summary = [line for line in err.splitlines() if " files in " in line][0]
    assert summary.endswith("s: 3 upscaled, 2 skipped (not an image extension: notes.txt; "
                            "output exists (--skip-existing): a.png), 0 failed")
    code, err = _run(["-i", folder, "-o", out, "--weights", weights, *TORCH], capsys)  # no flag: overwritten
    assert code == 0 and _read(out / "a_out.png")[0] == "PNG"


@pytest.mark.parametrize("suffix,ext,names", [
    ("x2", "png", ["a_x2.png", "b_x2.png", "c_x2.png", "d_x2.png"]),
    ("", "jpg", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]),
])
def test_suffix_and_ext(folder, tmp_path, capsys, suffix, ext, names):
    weights = _checkpoint(tmp_path / "w.pt")
    (folder / "broken.png").unlink()
    out = tmp_path / "sr"
    code, err = _run(["-i", folder, "-o", out, "--weights", weights, *TORCH, "--suffix", suffix, "--ext", ext],
                     capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == names
    assert {_read(out / n)[0] for n in names} == {"PNG" if ext == "png" else "JPEG"}


def test_default_output_folder_is_results(files, capsys, monkeypatch):
    monkeypatch.chdir(files["tmp"])
    code, err = _run(["-i", files["png"], "--weights", files["weights"], *TORCH], capsys)
    assert code == 0, err
    assert _read(files["tmp"] / "results" / "in_out.png")[2].shape == (2 * LR_H, 2 * LR_W, 3)
    code, err = _run([files["png"], "-o", "sr", "--weights", files["weights"], *TORCH], capsys)  # IN -o OUT
    assert code == 0 and (files["tmp"] / "sr" / "in_out.png").is_file()


def test_inputs_are_never_overwritten(folder, tmp_path, capsys):
    weights = _checkpoint(tmp_path / "w.pt")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, err = _run(["-i", folder, "-o", folder, "--weights", weights, *TORCH, "--suffix", ""], capsys)
    assert code == 1 and "error: --output: refusing to overwrite the input" in err
    src = folder / "a.png"
    code, err = _run([src, src, "--weights", weights, *TORCH], capsys)
    assert code == 1 and f"refusing to overwrite the input {src}" in err
    link = tmp_path / "link.png"  # another name for the same file is the same file
    link.symlink_to(src)
    code, err = _run([src, link, "--weights", weights, *TORCH], capsys)
    assert code == 1 and "refusing to overwrite the input" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # The same folder with a suffix is fine: the outputs are new files.
    (folder / "broken.png").unlink()
    code, err = _run(["-i", folder, "-o", folder, "--weights", weights, *TORCH], capsys)
    assert code == 0, err


def test_two_inputs_to_one_output_refused(tmp_path, capsys):
    weights = _checkpoint(tmp_path / "w.pt")
    lr = tmp_path / "lr"
    lr.mkdir()
    _image(lr / "a.png")
    _image(lr / "a.jpg", fmt="JPEG")
    code, err = _run(["-i", lr, "-o", tmp_path / "sr", "--weights", weights, "--ext", "png"], capsys)
    assert code == 1 and "would both be written to" in err and "a_out.png" in err
    assert not (tmp_path / "sr").exists()  # refused before anything was created


def test_an_interrupted_write_leaves_no_file(files, monkeypatch):
    """The image goes to a temporary file first: a failure or an interrupt mid-write leaves
    neither a partial output nor the temporary file."""
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    files["out"].write_bytes(b"previous")

    def save(self, fp, *args, **kwargs):
        fp.write(b"half an image")
        raise error

    monkeypatch.setattr(Image.Image, "save", save)
    for error, expected in [(OSError("disk full"), upscale.UpscaleError), (KeyboardInterrupt(), KeyboardInterrupt)]:
        with pytest.raises(expected):
            images.write_image(pixels, files["out"])
        assert files["out"].read_bytes() == b"previous"
        assert sorted(p.name for p in files["tmp"].iterdir()) == ["in.png", "out.png", "x2.pt"]


# -- errors ---------------------------------------------------------------------------------


def test_missing_output_folder(files, capsys):
    code, err = _run([files["png"], files["tmp"] / "no" / "out.png", "--weights", files["weights"]], capsys)
    assert code == 1 and "output folder does not exist" in err


def test_missing_input(files, capsys):
    code, err = _run([files["tmp"] / "nope.png", files["out"], "--weights", files["weights"]], capsys)
    assert code == 1 and f"error: --input {files['tmp'] / 'nope.png'}: no such file or folder" in err
    assert not files["out"].exists()
    empty = files["tmp"] / "empty"
    empty.mkdir()
    code, err = _run(["-i", empty, "--weights", files["weights"]], capsys)
    assert code == 1 and "no PNG, JPEG, WebP, BMP or TIFF images in this folder" in err


def test_missing_weights(files, capsys):
    code, err = _run([files["png"], files["out"], "--weights", files["tmp"] / "nope.pt"], capsys)
    assert code == 1 and "error: --weights: checkpoint file not found" in err


def test_unreadable_image(files, capsys):
    bad = files["tmp"] / "bad.png"
    bad.write_text("this is not a PNG")
    code, err = _run([bad, files["out"], "--weights", files["weights"], *TORCH], capsys)
    assert code == 1 and "cannot read" in err and "as an image" in err and "1 failed" in err


def test_checkpoint_not_nlsn(files, capsys):
    other = files["tmp"] / "other.pt"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(4)}, other)
    code, err = _run([files["png"], files["out"], "--weights", other], capsys)
    assert code == 1 and "other.pt: not an NLSN state_dict" in err
    junk = files["tmp"] / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 10)
    code, err = _run([files["png"], files["out"], "--weights", junk], capsys)
    assert code == 1 and f"{junk} is not a checkpoint: it is a file of another kind" in err
    # What a file is instead, by its first bytes (a WebP image made torch.load raise IndexError).
    for name, kind in [("w.webp", "a WebP image"), ("i.png", "a PNG image"), ("t.pt", "a text file"),
                       ("e.pth", "an empty file")]:
        path = files["tmp"] / name
        if kind.endswith("image"):
            Image.new("RGB", (4, 4)).save(path)
        else:
            path.write_text("" if kind == "an empty file" else "weights: see the README\n")
        code, err = _run([files["png"], files["out"], "--weights", path], capsys)
        assert code == 1 and f"error: --weights: {path} is not a checkpoint: it is {kind}" in err, err
        assert "Traceback" not in err
    # The format is told by content: a safetensors file named .pt loads.
    from safetensors.torch import save_file

    renamed = files["tmp"] / "st.pt"
    save_file(torch.load(files["weights"]), renamed)
    assert _run([files["png"], files["out"], "--weights", renamed, *TORCH], capsys)[0] == 0


def test_scale_mismatch(files, capsys):
    code, err = _run([files["png"], files["out"], "--weights", files["weights"], "--scale", 4], capsys)
    assert code == 1 and "--scale 4 does not match the checkpoint, which is x2" in err


def test_half_precision_needs_cuda(files, capsys):
    code, err = _run([files["png"], files["out"], "--weights", files["weights"], "--dtype", "float16",
                      "--device", "cpu"], capsys)
    assert code == 1 and "--dtype float16 needs a CUDA --device (got cpu)" in err


def test_contradicting_ext_and_output_file(files, capsys):
    code, err = _run([files["png"], files["out"], "--weights", files["weights"], "--ext", "jpg"], capsys)
    assert code == 1 and f"--ext jpg contradicts the output file name {files['out']}" in err


@pytest.mark.parametrize("argv", [
    ["{png}", "{out}", "--weights", "{weights}", "--tile", "-1"],
    ["{png}", "{out}", "--weights", "{weights}", "--outscale", "0"],
    ["{png}", "-i", "{png}", "--weights", "{weights}"],  # the input given twice
    ["{png}", "{out}", "-o", "{out}", "--weights", "{weights}"],  # the output given twice
    ["--weights", "{weights}"],  # no input
    ["{png}", "{out}", "--weights", "{weights}", "--dtype", "float64"],
])
def test_bad_arguments_exit_2(files, argv):
    with pytest.raises(SystemExit) as e:
        upscale.main([a.format(**files) for a in argv])
    assert e.value.code == 2


def test_missing_pillow_is_a_clear_error(files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import ...` raise ImportError
    code, err = _run([files["png"], files["out"], "--weights", files["weights"]], capsys)
    assert code == 1 and "needs Pillow" in err and "nlsa-triton[cli]" in err


def test_python_dash_m(files):
    """`python -m nlsa_triton.upscale` in a subprocess: success, then a failure's exit status."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "nlsa_triton.upscale", str(files["png"]), str(files["out"]),
           "--weights", str(files["weights"]), *TORCH, "--seed", "0", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _read(files["out"])[2].shape == (2 * LR_H, 2 * LR_W, 3)
    cmd[3] = str(files["tmp"] / "missing.png")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and "no such file or folder" in done.stderr


# -- what an image is: gray, alpha, 16 bits, TIFF ---------------------------------------------


def _info(path):
    """(format, Pillow mode, bits per channel, channels, (H, W)), 16-bit colour read through pypng/tifffile."""
    with Image.open(path) as img:
        fmt, mode, size = img.format, img.mode, img.size[::-1]
    pixels = images.read_image(path)
    channels = (1 if pixels.gray else 3) + (pixels.alpha is not None)
    return fmt, mode, pixels.bits, channels, size


def test_a_folder_keeps_each_image_as_it_was(tmp_path, capsys):
    """16-bit gray PNG and TIFF, 16-bit RGBA PNG, gray JPEG, RGBA PNG, 16-bit RGB TIFF, 8-bit TIFF:
    each comes back upscaled x2 with its format, gray or colour, alpha and bit depth."""
    import png
    import tifffile

    rng = np.random.default_rng(0)
    lr = tmp_path / "lr"
    lr.mkdir()
    gray16 = rng.integers(20000, 40000, (LR_H, LR_W), dtype=np.uint16)  # mid-gray: not near white
    Image.fromarray(gray16).save(lr / "gray16.png")
    Image.fromarray(gray16).save(lr / "gray16.tif")
    png.Writer(LR_W, LR_H, greyscale=False, alpha=True, bitdepth=16).write(
        open(lr / "rgba16.png", "wb"), rng.integers(0, 65536, (LR_H, LR_W * 4), dtype=np.uint16))
    _image(lr / "gray.jpg", mode="L", fmt="JPEG")
    _image(lr / "rgba.png", mode="RGBA")
    tifffile.imwrite(lr / "rgb16.tif", rng.integers(0, 65536, (LR_H, LR_W, 3), dtype=np.uint16), photometric="rgb")
    _image(lr / "rgb.tiff", fmt="TIFF")
    before = {p.name: _info(p) for p in lr.iterdir()}
    weights = _checkpoint(tmp_path / "w.pt")
    code, out, err = _run_streams(["-i", lr, "-o", tmp_path / "sr", "--weights", weights, *TORCH, "--seed", 0],
                                  capsys)
    assert code == 0, err
    assert out.strip().splitlines()[-1].endswith("s: 7 upscaled, 0 skipped, 0 failed")
    for name, (fmt, mode, bits, channels, (h, w)) in before.items():
        stem, ext = name.split(".")
        assert _info(tmp_path / "sr" / f"{stem}_out.{ext}") == (fmt, mode, bits, channels, (2 * h, 2 * w)), name
    # The inputs are what they are meant to be (format, bits, channels), so the loop checked each kind.
    assert {name: info[:1] + info[2:4] for name, info in before.items()} == {
        "gray16.png": ("PNG", 16, 1), "gray16.tif": ("TIFF", 16, 1), "rgba16.png": ("PNG", 16, 4), "gray.jpg": ("JPEG", 8, 1),
        "rgba.png": ("PNG", 8, 4), "rgb16.tif": ("TIFF", 16, 3), "rgb.tiff": ("TIFF", 8, 3)}
    assert "gray16.png (11x9, gray 16-bit)" in out and "rgba.png (11x9, RGBA 8-bit)" in out


def test_gray_16_bit_and_alpha_values(tmp_path, capsys):
    """A 16-bit gray image: the network's output on the gray replicated to RGB, back to gray
    by ITU-R 601 luma, at 16 bits (a mid-gray input stays mid-gray). Alpha: bicubic, as is."""
    weights = _checkpoint(tmp_path / "w.pt")
    gray16 = np.random.default_rng(1).integers(20000, 40000, (LR_H, LR_W), dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g.png")
    code, err = _run([tmp_path / "g.png", tmp_path / "o.png", "--weights", weights, *TORCH, "--seed", 2], capsys)
    assert code == 0, err
    model = NLSN.from_file(weights, backend="torch").eval()
    lr = torch.from_numpy(gray16.astype(np.float32) / 65535).expand(1, 3, -1, -1)
    with torch.no_grad():
        sr = model(lr, generator=torch.Generator().manual_seed(2))
    luma = 0.299 * sr[0, 0] + 0.587 * sr[0, 1] + 0.114 * sr[0, 2]
    expected = (luma * 65535).clamp(0, 65535).round().numpy().astype(np.uint16)
    got = np.asarray(Image.open(tmp_path / "o.png"))
    assert got.dtype == np.uint16 and np.array_equal(got, expected)
    assert 15000 < got.mean() < 45000  # not the near-white an 8-bit conversion gives

    rgba = _image(tmp_path / "a.png", mode="RGBA")
    code, err = _run([rgba, tmp_path / "ao.png", "--weights", weights, *TORCH], capsys)
    assert code == 0, err
    alpha = torch.from_numpy(np.asarray(Image.open(rgba))[..., 3].astype(np.float32) / 255)[None, None]
    expected = (upscale.resize(alpha, 2 * LR_H, 2 * LR_W)[0, 0] * 255).clamp(0, 255).round().numpy()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "ao.png"))[..., 3], expected.astype(np.uint8))


@pytest.mark.parametrize("name", ["out.tif", "out.tiff", "out.TIF", "out.bmp", "out.webp", "out.jpeg"])
def test_output_file_with_any_supported_extension(files, capsys, name):
    target = files["tmp"] / name
    code, err = _run([files["png"], target, "--weights", files["weights"], *TORCH], capsys)
    assert code == 0, err
    assert target.is_file() and _read(target)[2].shape == (2 * LR_H, 2 * LR_W, 3)


def test_what_a_format_cannot_hold_is_dropped_with_a_warning(tmp_path, capsys):
    weights = _checkpoint(tmp_path / "w.pt")
    rgba = _image(tmp_path / "a.png", mode="RGBA")
    code, out, err = _run_streams([rgba, tmp_path / "a.jpg", "--weights", weights, *TORCH], capsys)
    assert code == 0 and _read(tmp_path / "a.jpg")[:2] == ("JPEG", "RGB")
    assert f"warning: {tmp_path / 'a.jpg'}: its format holds no alpha; alpha of {rgba} dropped" in err
