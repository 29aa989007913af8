"""python -m nlsa_triton.train: data checks before training, checkpoints the loaders read,
exact resumes, every --arch, and torchrun with 2 CPU processes (gloo)."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")
pytest.importorskip("tqdm")
from PIL import Image  # noqa: E402

from nlsa_triton.models import NLSN  # noqa: E402
from nlsa_triton.models.variants import load_model  # noqa: E402
from nlsa_triton.train import main  # noqa: E402
from nlsa_triton.train.data import downscale, load_rgb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# A network of two NLSA blocks (one opens the body, one follows the 8th residual block)
# would cost seconds an iteration; one residual block keeps each iteration to milliseconds.
# The torch backend: "auto" would run Triton's CPU interpreter under the tests' TRITON_INTERPRET=1.
TINY = ["--n-feats", "8", "--n-resblocks", "1", "--n-hashes", "2", "--chunk-size", "8", "--patch-size", "12",
        "--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--quiet", "--backend", "torch"]


def _photos(folder: Path, sizes=((20, 24), (18, 30), (26, 22))) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        img = 128 + 80 * np.sin(xx / 2.0 + i)[..., None] * np.cos(yy / 3.0)[..., None] + rng.normal(0, 10, (h, w, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def _div2k(root: Path, scale: int = 2) -> Path:
    hr_dir = _photos(root / "DIV2K_train_HR")
    lr_dir = root / "DIV2K_train_LR_bicubic" / f"X{scale}"
    lr_dir.mkdir(parents=True)
    for hr in sorted(hr_dir.iterdir()):
        lr = downscale(load_rgb(hr), scale)
        Image.fromarray(lr.permute(1, 2, 0).numpy()).save(lr_dir / f"{hr.stem}x{scale}.png")
    return root


def _train(data, save, *extra) -> int:
    return main(["--data", str(data), "--save", str(save), *TINY, *extra])


def test_resume_continues_exactly(tmp_path):
    data = _div2k(tmp_path / "div2k")
    assert _train(data, tmp_path / "straight", "--iters", "4", "--lr-step", "3") == 0
    assert _train(data, tmp_path / "split", "--iters", "2", "--lr-step", "3") == 0
    assert _train(data, tmp_path / "split", "--iters", "4", "--lr-step", "3", "--resume") == 0
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 4
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for key, state in a["optimizer"]["state"].items():  # Adam's moments and step count
        for field, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][key][field]), (key, field)
    assert a["schedule"] == b["schedule"] and a["schedule"]["last_epoch"] == 4
    # The lr was halved after iteration 3; the resumed log continues at iteration 3.
    with open(tmp_path / "split" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iter"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["lr"]) for r in rows] == [1e-3, 1e-3, 5e-4, 5e-4]
    with open(tmp_path / "straight" / "log.csv") as f:
        assert [r["loss"] for r in csv.DictReader(f)] == [r["loss"] for r in rows]


def test_checkpoint_loads_in_nlsn_and_the_upscaler(tmp_path):
    data = _photos(tmp_path / "photos")  # HR only: LR made on the fly
    bench = tmp_path / "bench" / "Set5"
    _div2k(tmp_path / "val")  # reuse its HR/LR as a one-set benchmark
    (bench.parent).mkdir()
    os.rename(tmp_path / "val" / "DIV2K_train_HR", tmp_path / "bench" / "Set5_HR")
    bench.mkdir()
    os.rename(tmp_path / "bench" / "Set5_HR", bench / "HR")
    os.rename(tmp_path / "val" / "DIV2K_train_LR_bicubic", bench / "LR_bicubic")
    save = tmp_path / "run"
    assert _train(data, save, "--iters", "3", "--val-data", str(tmp_path / "bench"), "--val-every", "3") == 0
    with open(save / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["val_psnr_y"] and 0 < float(rows[-1]["val_psnr_y"]) < 60
    model = NLSN.from_file(save / "model.pt", n_hashes=2, chunk_size=8)
    assert (model.scale, model.n_feats, model.n_resblocks) == (2, 8, 1)
    state = torch.load(save / "checkpoint.pt", weights_only=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["model"][name])
    from nlsa_triton.upscale.cli import main as upscale

    out = tmp_path / "up.png"
    assert upscale([str(data / "p0.png"), str(out), "--weights", str(save / "model.pt"), "--quiet",
                    "--backend", "torch"]) == 0
    assert Image.open(out).size == (48, 40)


@pytest.mark.parametrize("arch", ["edsr", "edsr-nla", "edsr-cc"])
def test_table1_variants_train_and_reload(tmp_path, arch):
    save = tmp_path / arch
    assert _train(_photos(tmp_path / "photos"), save, "--arch", arch, "--iters", "2") == 0
    model = load_model(save / "model.pt")
    state = torch.load(save / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())
    with open(save / "log.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


def _expect_refusal(capsys, data, save, message):
    assert _train(data, save, "--iters", "1") == 2
    assert message in capsys.readouterr().err
    assert not (save / "model.pt").exists()


def test_bad_data_is_refused_before_training(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_refusal(capsys, empty, tmp_path / "s0", "no images")
    data = _div2k(tmp_path / "div2k")
    lr_dir = data / "DIV2K_train_LR_bicubic" / "X2"
    (lr_dir / "p1x2.png").rename(tmp_path / "p1x2.png")
    _expect_refusal(capsys, data, tmp_path / "s1", "p1.png has no LR image")
    Image.new("RGB", (15, 9)).save(lr_dir / "p1x2.png")  # p1 is 30x18: its x2 LR is 15x9
    Image.new("RGB", (11, 9)).save(lr_dir / "p0x2.png")  # p0 is 24x20: 12x10 expected
    _expect_refusal(capsys, data, tmp_path / "s2", "p0x2.png is 11x9; for the 24x20 HR image")
    Image.new("RGB", (12, 10)).save(lr_dir / "p0x2.png")
    Image.new("RGB", (3, 3)).save(lr_dir / "stray.png")
    _expect_refusal(capsys, data, tmp_path / "s3", "stray.png has no HR image")
    small = _photos(tmp_path / "small", sizes=((10, 30),))
    _expect_refusal(capsys, small, tmp_path / "s4", "is smaller than the training patch (12 HR pixels)")


def test_bf16_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: --amp bf16 is allowed")
    with pytest.raises(SystemExit, match="--amp bf16 needs a CUDA device"):
        _train(_photos(tmp_path / "photos"), tmp_path / "run", "--iters", "1", "--amp", "bf16")


def test_torchrun_two_cpu_processes(tmp_path):
    data = _photos(tmp_path / "photos")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "nlsa_triton.train", "--data", str(data), "--save", str(tmp_path / "ddp"), "--iters", "3",
           "--device", "cpu", *TINY]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 3
    with open(tmp_path / "ddp" / "log.csv") as f:
        assert [int(r["iter"]) for r in csv.DictReader(f)] == [1, 2, 3]
    assert "2 process(es) on cpu" in done.stderr


def test_table1_variants_share_the_backbone_and_the_attention_places():
    from nlsa_triton.baselines import CrissCrossAttention, NonLocalAttention
    from nlsa_triton.models.edsr import ResBlock
    from nlsa_triton.models.variants import build_model
    from nlsa_triton.modules import NonLocalSparseAttention

    kinds = {"edsr-nla": NonLocalAttention, "edsr-cc": CrissCrossAttention, "edsr-nlsa": NonLocalSparseAttention}
    bodies = {arch: list(build_model(arch, 2, n_feats=16, n_resblocks=17).body) for arch in ("edsr", *kinds)}
    assert type(build_model("edsr-nlsa", 2, n_feats=16, n_resblocks=1)) is NLSN  # edsr-nlsa is NLSN
    for arch, kind in kinds.items():
        # NLSN's places: opening the body and after the 8th and 16th residual blocks.
        assert [i for i, m in enumerate(bodies[arch]) if isinstance(m, kind)] == [0, 9, 18]
        assert [type(m) for m in bodies[arch] if not isinstance(m, kind)] == [type(m) for m in bodies["edsr"]]
    assert sum(isinstance(m, ResBlock) for m in bodies["edsr"]) == 17 and len(bodies["edsr"]) == 18
