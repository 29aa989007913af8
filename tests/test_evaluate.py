"""python -m nlsa_triton.evaluate: the benchmark layout with a checkpoint, the metrics-only
mode, the x8 self-ensemble and the out-of-memory fallback to tiles."""
import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from nlsa_triton.evaluate import main, super_resolve  # noqa: E402
from nlsa_triton.metrics import psnr_y, ssim_y  # noqa: E402
from nlsa_triton.models import NLSN  # noqa: E402
from nlsa_triton.models.variants import build_model, load_model, model_config  # noqa: E402


# The NLSA blocks on the torch backend: "auto" would pick Triton's CPU interpreter under the
# tests' TRITON_INTERPRET=1, which takes seconds per block.
TORCH = ["--backend", "torch"]


def _save(array: np.ndarray, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _read(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).double()


def _benchmark(root, sizes=((26, 30), (33, 28))):
    """Set5 in the benchmark layout: HR sizes not multiples of 2 (cropped by the loader)."""
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        hr = rng.integers(0, 256, (h, w, 3))
        _save(hr, root / "Set5" / "HR" / f"img{i}.png")
        lr = F.interpolate(torch.from_numpy(hr).permute(2, 0, 1)[None].float(), size=(h // 2, w // 2),
                           mode="bicubic", antialias=True)[0].clamp(0, 255).round()
        _save(lr.permute(1, 2, 0).numpy(), root / "Set5" / "LR_bicubic" / "X2" / f"img{i}x2.png")


def _checkpoint(path, arch="edsr-nlsa"):
    torch.manual_seed(0)
    model = build_model(arch, 2, n_feats=8, n_resblocks=1, n_hashes=1, chunk_size=8)
    torch.save({"model": model.state_dict(), "config": model_config(model, arch)}, path)
    return model


def test_benchmark_run_saves_images_csv_and_tables(tmp_path, capsys):
    _benchmark(tmp_path / "data")
    _checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out"
    assert main(["--weights", str(tmp_path / "model.pt"), "--data", str(tmp_path / "data"), "--sets", "Set5",
                 "--scale", "2", "--out", str(out), "--save-images", "--seed", "3", *TORCH]) == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["img0", "img1"]
    assert set(rows[0]) == {"set", "image", "psnr_y", "ssim_y", "seconds", "peak_memory_mb", "tile"}
    for r in rows:  # the CSV's numbers are those of the saved image against the cropped HR image
        sr = _read(out / "Set5" / f"{r['image']}_x2_SR.png")
        hr = _read(tmp_path / "data" / "Set5" / "HR" / f"{r['image']}.png")[:, :sr.shape[1], :sr.shape[2]]
        assert float(r["psnr_y"]) == pytest.approx(psnr_y(sr, hr, 2), abs=1e-3)
        assert float(r["ssim_y"]) == pytest.approx(ssim_y(sr, hr, 2), abs=1e-5)
        assert r["tile"] == ""
    table = (out / "Set5_x2.md").read_text()
    assert "| NLSN paper | 38.34 | 0.9618 |" in table and "**mean**" in table
    assert "Set5 x2: 2 images, PSNR-Y" in capsys.readouterr().out


def test_tile_option_runs_in_tiles_and_records_it(tmp_path, capsys):
    _benchmark(tmp_path / "data")
    _checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out"
    assert main(["--weights", str(tmp_path / "model.pt"), "--data", str(tmp_path / "data"), "--sets", "Set5",
                 "--scale", "2", "--out", str(out), "--tile", "8", *TORCH]) == 0
    with open(out / "metrics.csv") as f:
        assert [r["tile"] for r in csv.DictReader(f)] == ["8", "8"]
    assert "in tiles of 8 px" in capsys.readouterr().err


def test_metrics_only_matches_names_and_crops_hr(tmp_path, capsys):
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (25, 31, 3))
    sr = np.clip(hr[:24, :30] + rng.normal(0, 6, (24, 30, 3)), 0, 255).round()
    _save(hr, tmp_path / "hr" / "bird.png")
    _save(sr, tmp_path / "sr" / "bird_x2_SR.png")  # EDSR's output name
    assert main(["--sr", str(tmp_path / "sr"), "--hr", str(tmp_path / "hr"), "--scale", "2",
                 "--out", str(tmp_path / "out")]) == 0
    expected = psnr_y(_read(tmp_path / "sr" / "bird_x2_SR.png"), _read(tmp_path / "hr" / "bird.png")[:, :24, :30], 2)
    with open(tmp_path / "out" / "metrics.csv") as f:
        (row,) = csv.DictReader(f)
    assert row["set"] == "hr" and float(row["psnr_y"]) == pytest.approx(expected, abs=1e-3)
    assert f"PSNR-Y {expected:.3f} dB" in capsys.readouterr().out
    # An SR image off by a whole scale step, and a missing one, are refused by name.
    _save(sr[:22], tmp_path / "sr" / "bird_x2_SR.png")
    assert main(["--sr", str(tmp_path / "sr"), "--hr", str(tmp_path / "hr"), "--scale", "2"]) == 1
    assert "bird_x2_SR.png is 30x22" in capsys.readouterr().err
    _save(sr, tmp_path / "sr" / "bird_x2_SR.png")
    _save(hr, tmp_path / "hr" / "cat.png")
    assert main(["--sr", str(tmp_path / "sr"), "--hr", str(tmp_path / "hr"), "--scale", "2"]) == 1
    assert "no SR image for" in capsys.readouterr().err


def test_missing_lr_image_is_named(tmp_path, capsys):
    _benchmark(tmp_path / "data")
    _checkpoint(tmp_path / "model.pt")
    (tmp_path / "data" / "Set5" / "LR_bicubic" / "X2" / "img1x2.png").unlink()
    assert main(["--weights", str(tmp_path / "model.pt"), "--data", str(tmp_path / "data"), "--sets", "Set5",
                 "--scale", "2"]) == 1
    assert "img1.png has no LR image" in capsys.readouterr().err


class _Ramp(torch.nn.Module):
    """x2 nearest upsampling plus a position ramp: not flip- or transpose-equivariant.
    Raises an out-of-memory error on inputs larger than ``limit`` pixels a side."""
    scale = 2

    def __init__(self, limit=10 ** 9, ramp=True):
        super().__init__()
        self.limit, self.ramp = limit, ramp

    def forward(self, x, generator=None):
        if max(x.shape[-2:]) > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 TiB")
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        if not self.ramp:
            return up
        cols = torch.arange(up.shape[-1], dtype=x.dtype) / 100
        rows = torch.arange(up.shape[-2], dtype=x.dtype)[:, None] / 100
        return up + cols + 0.3 * rows


def test_self_ensemble_is_the_mean_over_the_eight_symmetries():
    lr = torch.rand(1, 3, 5, 7, dtype=torch.float64)
    model = _Ramp()
    expected = torch.zeros(1, 3, 10, 14, dtype=torch.float64)
    for flip in (False, True):
        for k in range(4):  # the dihedral group: rot90^k, with and without a flip
            x = torch.rot90(lr.flip(-1) if flip else lr, k, (-2, -1))
            y = torch.rot90(model(x), -k, (-2, -1))
            expected += y.flip(-1) if flip else y
    got, tile = super_resolve(model, lr, self_ensemble=True)
    torch.testing.assert_close(got, expected / 8, rtol=0, atol=1e-12)
    assert tile is None
    assert not torch.allclose(super_resolve(model, lr)[0], got)  # the ensemble really changed it


def test_out_of_memory_falls_back_to_tiles_and_says_so():
    lr = torch.rand(1, 3, 40, 24, dtype=torch.float64)
    messages = []
    # 40 rows fail; tiles of 32 (with their 10-pixel margins, 40 rows) fail too; 16 fit.
    sr, tile = super_resolve(_Ramp(limit=39, ramp=False), lr, log=messages.append)
    assert tile == 16 and messages == [f"out of memory on cpu; retrying in tiles of {t} x {t} LR pixels (pad 10)"
                                       for t in (32, 16)]
    # Nearest upsampling is local, so the tiles, pasted together, give the whole image's result.
    assert torch.equal(sr, _Ramp(ramp=False)(lr))


def test_load_model_reads_trainer_and_bare_nlsn_checkpoints(tmp_path):
    model = _checkpoint(tmp_path / "trained.pt", "edsr-cc")
    loaded = load_model(tmp_path / "trained.pt")
    assert type(loaded) is type(model) and loaded.attention == "cc"
    torch.save(NLSN(2, n_feats=8, n_resblocks=1).state_dict(), tmp_path / "bare.pt")  # the authors' form
    assert isinstance(load_model(tmp_path / "bare.pt"), NLSN)


def test_the_shipped_model_is_the_upscalers_default_and_beats_bicubic(tmp_path, capsys):
    """The checkpoint in nlsa_triton/weights: the upscaler takes it without --weights (and
    says so), and on a crop of a held-out photo (grace_hopper, which it was not trained on)
    it is closer to the original than bicubic upscaling."""
    from nlsa_triton.pretrained import SHIPPED_WEIGHTS
    from nlsa_triton.train.data import downscale, load_rgb
    from nlsa_triton.upscale.cli import main as upscale

    matplotlib_cbook = pytest.importorskip("matplotlib.cbook")
    hr = load_rgb(matplotlib_cbook.get_sample_data("grace_hopper.jpg"))[:, 200:296, 220:316]  # face and collar
    lr = downscale(hr, 2)
    _save(lr.permute(1, 2, 0).numpy(), tmp_path / "lr.png")
    assert upscale([str(tmp_path / "lr.png"), str(tmp_path / "sr.png"), "--seed", "0", "--device", "cpu", *TORCH]) == 0
    assert f"no --weights given: using the small NLSN x2 shipped with nlsa_triton ({SHIPPED_WEIGHTS.name}" \
        in capsys.readouterr().err
    sr = _read(tmp_path / "sr.png")
    bicubic = F.interpolate(lr[None].double(), scale_factor=2, mode="bicubic").clamp(0, 255).round()
    assert psnr_y(sr, hr, 2) > psnr_y(bicubic, hr, 2) + 0.3
