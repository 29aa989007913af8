"""PSNR-Y and SSIM-Y as super-resolution papers report them.

``psnr_y``: NLSN's (and EDSR's) ``calc_psnr``: the output quantised to 8 bits, the
RGB difference mapped to luma with ITU-R BT.601's weights [65.738, 129.057, 25.064] / 256
(the Y of MATLAB's ``rgb2ycbcr``, whose +16 offset cancels in a difference), ``scale``
pixels shaved at every border, then ``10 log10(peak^2 / MSE)``.

``ssim_y``: MATLAB's SSIM on ``rgb2ycbcr``'s Y as the SR benchmark scripts compute it
(Wang et al.'s ``ssim_index``): both images as 8-bit RGB, Y = ``rgb2ycbcr``'s
``round(16 + (65.481 R + 128.553 G + 24.966 B) / 255)``, the same shave, an 11x11
Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, the mean over the 'valid'
region (where the window fits). scikit-image's ``structural_similarity`` with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255`` gives
the same number on the same Y (``tests/test_metrics.py``).

Images are (3, H, W) or (1, 3, H, W), numpy arrays or torch tensors, in [0, rgb_range];
``hr`` holds 8-bit values (what an image file gives), ``sr`` any values (quantised here,
as NLSN quantises its output before measuring it).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr_y", "ssim_y", "quantize", "rgb_to_y"]

#: NLSN/EDSR's luma weights of an RGB difference (in [0, 1] units): BT.601's / 256.
PSNR_Y_WEIGHTS = (65.738 / 256, 129.057 / 256, 25.064 / 256)
#: MATLAB rgb2ycbcr's Y row (for RGB in [0, 255]: divided by 255) and offset.
YCBCR_Y_WEIGHTS = (65.481, 128.553, 24.966)
YCBCR_Y_OFFSET = 16.0
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _as_image(image, name: str) -> torch.Tensor:
    """(3, H, W) float64 from a (3, H, W) or (1, 3, H, W) array or tensor."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.asarray(image))
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(image).__name__}")
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"{name} must be an RGB image of shape (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    return image.detach().to(device="cpu", dtype=torch.float64)


def quantize(image: torch.Tensor, rgb_range: float = 255) -> torch.Tensor:
    """EDSR's ``quantize``: to the nearest 8-bit level, clamped, back in [0, rgb_range]."""
    scale = 255.0 / rgb_range
    return image.mul(scale).clamp(0, 255).round().div(scale)


def _prepare(sr, hr, scale: int, rgb_range: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 0:
        raise ValueError(f"scale (the pixels shaved at each border) must be an integer >= 0, got {scale!r}")
    if not (isinstance(rgb_range, (int, float)) and rgb_range > 0):
        raise ValueError(f"rgb_range must be a positive number, got {rgb_range!r}")
    sr, hr = _as_image(sr, "sr"), _as_image(hr, "hr")
    if sr.shape != hr.shape:
        raise ValueError(f"sr and hr must have the same shape, got {tuple(sr.shape)} and {tuple(hr.shape)}")
    h, w = hr.shape[-2:]
    if h <= 2 * scale or w <= 2 * scale:
        raise ValueError(f"a {h}x{w} image has nothing left after shaving {scale} pixels at every border")
    return quantize(sr, rgb_range), hr, scale


def _shave(image: torch.Tensor, shave: int) -> torch.Tensor:
    return image[..., shave:image.shape[-2] - shave, shave:image.shape[-1] - shave]


def psnr_y(sr, hr, scale: int, *, rgb_range: float = 255) -> float:
    """NLSN's PSNR on luma, in dB (``inf`` for identical images); ``scale`` pixels are shaved
    at every border, as NLSN does on the benchmark sets."""
    sr, hr, shave = _prepare(sr, hr, scale, rgb_range)
    weights = torch.tensor(PSNR_Y_WEIGHTS, dtype=torch.float64).view(3, 1, 1)
    diff = ((sr - hr) / rgb_range * weights).sum(dim=0)
    mse = float(_shave(diff, shave).pow(2).mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def rgb_to_y(image: torch.Tensor, rgb_range: float = 255) -> torch.Tensor:
    """MATLAB ``rgb2ycbcr``'s Y of an 8-bit RGB image, as uint8 (rounded), in [16, 235]: (3, H, W) -> (H, W)."""
    rgb = image.to(torch.float64) * (255.0 / rgb_range)
    weights = torch.tensor(YCBCR_Y_WEIGHTS, dtype=torch.float64).view(3, 1, 1) / 255.0
    return (rgb * weights).sum(dim=0).add(YCBCR_Y_OFFSET).round()


def _gaussian_window() -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-x * x / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    return torch.outer(g, g).view(1, 1, SSIM_WINDOW, SSIM_WINDOW)


def ssim_y(sr, hr, scale: int, *, rgb_range: float = 255) -> float:
    """MATLAB's SSIM (Wang et al.) on ``rgb2ycbcr``'s Y after shaving ``scale`` pixels:
    11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, L 255, mean over the valid region."""
    sr, hr, shave = _prepare(sr, hr, scale, rgb_range)
    a, b = (_shave(rgb_to_y(t, rgb_range), shave) for t in (sr, hr))
    if min(a.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after the shave, "
                         f"got {a.shape[0]}x{a.shape[1]}")
    window = _gaussian_window()

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t.view(1, 1, *t.shape), window)[0, 0]  # 'valid' region

    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a ** 2
    var_b = filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())
