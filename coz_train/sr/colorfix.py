"""Colour fixes applied after an SR step, as options of the official CoZ inference.

Both transfer the colour of the SR input (the bicubic-upscaled crop) onto the SR output, to stop
colour drift from compounding over recursive steps:
- `adain`: per-channel mean and standard deviation of the output are matched to the input's.
- `wavelet`: the output's low-frequency band is replaced by the input's; the band is what is
  left after repeated dilated box blurs (a Haar-like a trous decomposition, 5 levels), so the
  output keeps its own high-frequency detail.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

COLORFIXES = ("none", "adain", "wavelet")


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def _to_image(tensor: torch.Tensor) -> Image.Image:
    array = (tensor[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(array)


def adain(output: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """[1, 3, H, W] -> same, with each channel's mean/std taken from `reference`."""
    # std as sqrt(unbiased variance + eps), as the official colour fix
    o_mean, o_std = output.mean(dim=(2, 3), keepdim=True), (output.var(dim=(2, 3), keepdim=True) + eps).sqrt()
    r_mean, r_std = reference.mean(dim=(2, 3), keepdim=True), (reference.var(dim=(2, 3), keepdim=True) + eps).sqrt()
    return (output - o_mean) / o_std * r_std + r_mean


def _low_frequency(image: torch.Tensor, levels: int = 5) -> torch.Tensor:
    kernel = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=image.dtype) / 16.0
    kernel = kernel.expand(image.shape[1], 1, 3, 3)
    low = image
    for level in range(levels):
        dilation = 2**level
        padded = F.pad(low, (dilation,) * 4, mode="replicate")
        low = F.conv2d(padded, kernel, groups=image.shape[1], dilation=dilation)
    return low


def wavelet(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Output's high frequencies on the reference's low frequencies."""
    return output - _low_frequency(output) + _low_frequency(reference)


def apply_colorfix(name: str, output: Image.Image, reference: Image.Image) -> Image.Image:
    if name == "none":
        return output
    if name not in COLORFIXES:
        raise ValueError(f"eval.colorfix='{name}' is not one of {COLORFIXES}.")
    if reference.size != output.size:
        reference = reference.resize(output.size, Image.BICUBIC)
    fix = adain if name == "adain" else wavelet
    return _to_image(fix(_to_tensor(output), _to_tensor(reference)))
