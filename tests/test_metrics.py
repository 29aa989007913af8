"""PSNR-Y and SSIM-Y against independent computations: NLSN's calc_psnr written out in
numpy, Wang et al.'s SSIM written out window by window, and scikit-image's
structural_similarity (where installed) on MATLAB rgb2ycbcr's Y."""
import math

import numpy as np
import pytest
import torch

from nlsa_triton.metrics import psnr_y, quantize, rgb_to_y, ssim_y


def _pair(seed: int, h: int, w: int, noise: float = 8.0):
    """An 8-bit HR image with some structure and a float SR estimate of it (off the 8-bit grid)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 3.0)[None] * np.cos(yy / 5.0)[None] + rng.normal(0, 20, (3, h, w))
    hr = np.clip(np.round(base), 0, 255)
    sr = hr + rng.normal(0, noise, hr.shape) + 0.3
    return sr, hr


def _numpy_psnr(sr, hr, shave):
    """NLSN's calc_psnr (rgb_range 255): quantise, luma-weighted difference / 255, shave, PSNR."""
    sr = np.round(np.clip(sr, 0, 255))
    diff = (sr - hr) / 255.0
    y = diff[0] * 65.738 / 256 + diff[1] * 129.057 / 256 + diff[2] * 25.064 / 256
    valid = y[shave:-shave, shave:-shave]
    return -10 * math.log10(np.mean(valid ** 2))


def _matlab_y(rgb):
    """rgb2ycbcr on uint8 RGB: Y rounded to an integer."""
    return np.round(16 + (65.481 * rgb[0] + 128.553 * rgb[1] + 24.966 * rgb[2]) / 255.0)


def _wang_ssim(a, b):
    """Wang et al.'s ssim_index: 11x11 Gaussian (1.5), K = (0.01, 0.03), L = 255, valid windows."""
    x = np.arange(11) - 5
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (win * pa).sum(), (win * pb).sum()
            va, vb = (win * pa * pa).sum() - ma ** 2, (win * pb * pb).sum() - mb ** 2
            cov = (win * pa * pb).sum() - ma * mb
            values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("seed, h, w, scale", [(0, 31, 40, 2), (1, 37, 29, 3), (2, 48, 48, 4)])
def test_psnr_y_is_nlsns_calc_psnr(seed, h, w, scale):
    sr, hr = _pair(seed, h, w)
    expected = _numpy_psnr(sr, hr, scale)
    assert psnr_y(sr, hr, scale) == pytest.approx(expected, abs=1e-9)
    # The same in [0, 1] (rgb_range 1) and as (1, 3, H, W) tensors.
    got = psnr_y(torch.from_numpy(sr / 255)[None].float(), torch.from_numpy(hr / 255)[None], scale, rgb_range=1)
    assert got == pytest.approx(expected, abs=1e-4)


def test_psnr_y_quantises_the_output_and_shaves_the_border():
    sr, hr = _pair(3, 30, 30)
    sr8 = np.round(np.clip(sr, 0, 255))
    assert psnr_y(sr, hr, 2) == psnr_y(sr8 + 0.4, hr, 2)  # rounds to the same 8-bit image
    spoiled = sr8.copy()
    spoiled[:, :2] = 0  # only the shaved rows differ
    assert psnr_y(spoiled, hr, 2) == psnr_y(sr8, hr, 2)
    assert psnr_y(spoiled, hr, 1) < psnr_y(sr8, hr, 1)
    assert psnr_y(hr, hr, 2) == math.inf


@pytest.mark.parametrize("seed, h, w, scale", [(0, 27, 31, 2), (4, 30, 26, 3)])
def test_ssim_y_is_wangs_ssim_on_matlab_y(seed, h, w, scale):
    sr, hr = _pair(seed, h, w, noise=15)
    a = _matlab_y(np.round(np.clip(sr, 0, 255)))[scale:-scale, scale:-scale]
    b = _matlab_y(hr)[scale:-scale, scale:-scale]
    assert ssim_y(sr, hr, scale) == pytest.approx(_wang_ssim(a, b), abs=1e-10)
    assert ssim_y(hr, hr, scale) == pytest.approx(1.0, abs=1e-12)


def test_ssim_y_matches_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    for seed, (h, w) in enumerate([(64, 80), (45, 51)]):
        sr, hr = _pair(seed, h, w, noise=10)
        a = _matlab_y(np.round(np.clip(sr, 0, 255)))[2:-2, 2:-2]
        b = _matlab_y(hr)[2:-2, 2:-2]
        expected = skimage_metrics.structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
        assert ssim_y(sr, hr, 2) == pytest.approx(expected, abs=1e-9)


def test_rgb_to_y_is_rgb2ycbcr():
    rgb = torch.tensor([[0, 255, 255, 10], [0, 255, 0, 200], [0, 255, 0, 30]], dtype=torch.float64).view(3, 1, 4)
    assert rgb_to_y(rgb).flatten().tolist() == [16.0, 235.0, 81.0, 122.0]  # black, white, red, a green (122.33)
    assert quantize(torch.tensor([0.5 / 255, 1.2]), 1).tolist() == [0.0, 1.0]


def test_bad_inputs_name_the_argument():
    sr, hr = _pair(0, 20, 20)
    with pytest.raises(ValueError, match="same shape"):
        psnr_y(sr[:, :-1], hr, 2)
    with pytest.raises(ValueError, match="hr must be an RGB image"):
        psnr_y(sr, hr[:1], 2)
    with pytest.raises(ValueError, match="nothing left"):
        psnr_y(sr, hr, 10)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_y(sr, hr, 5)
    with pytest.raises(ValueError, match="scale"):
        ssim_y(sr, hr, 2.0)
    with pytest.raises(TypeError, match="sr must be"):
        psnr_y(sr.tolist(), hr, 2)
