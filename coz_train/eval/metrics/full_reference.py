"""PSNR and SSIM against the ground truth, on the luma (Y) channel of ITU-R BT.601 YCbCr in [0, 1].

The usual SR convention; no border is cropped. PSNR is in dB with a peak of 1.0, and two identical
images give `inf`. SSIM is Wang et al. (2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
K2 = 0.03, averaged over the valid (unpadded) window positions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def to_tensor(image: Image.Image, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RGB PIL image -> float tensor (1, 3, H, W) in [0, 1]."""
    array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.float64) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(dtype).contiguous()


def luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) ITU-R BT.601 Y in [16/255, 235/255]."""
    weights = torch.tensor([65.481, 128.553, 24.966], dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255.0
    return (x * weights).sum(dim=1, keepdim=True) + 16.0 / 255.0


def _pair(image: Image.Image, reference: Image.Image | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if reference is None:
        raise ValueError(f"{name} is a full-reference metric: it needs the ground-truth image.")
    if image.size != reference.size:
        raise ValueError(f"{name}: image {image.size} and reference {reference.size} differ in size.")
    return luma(to_tensor(image, torch.float64)), luma(to_tensor(reference, torch.float64))


def psnr(image: Image.Image, reference: Image.Image | None) -> float:
    """PSNR (dB, peak 1.0) on the BT.601 Y channel; inf for identical images."""
    x, y = _pair(image, reference, "psnr")
    mse = float(torch.mean((x - y) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_filter(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Normalised 2-D Gaussian filter over the valid positions, as two separable 1-D passes."""
    coords = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return F.conv2d(F.conv2d(x, g.view(1, 1, size, 1)), g.view(1, 1, 1, size))


def ssim(image: Image.Image, reference: Image.Image | None) -> float:
    """SSIM (Wang et al. 2004) on the BT.601 Y channel in [0, 1]: Gaussian 11x11 window, sigma 1.5."""
    x, y = _pair(image, reference, "ssim")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {image.size}.")
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    moments = _gaussian_filter(torch.cat([x, y, x * x, y * y, x * y]), SSIM_WINDOW, SSIM_SIGMA)
    mu_x, mu_y, xx, yy, xy = moments.split(1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())
