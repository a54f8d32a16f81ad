"""Plain resamplers as SR backbones: the `bicubic` and `nearest` baselines of the CoZ paper."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from coz_train.sr.backbones.base import register_backbone


class Resampler:
    scale = 4
    uses_prompt = False

    def __init__(self, name: str, mode: int):
        self.name, self.mode = name, mode

    def upscale(self, images: list[Image.Image], prompts: list[str], size: int | None = None) -> list[Image.Image]:
        return [im.resize((size, size) if size else (im.width * self.scale, im.height * self.scale), self.mode)
                for im in images]


@register_backbone("bicubic", uses_prompt=False)
def _bicubic(cfg: Any, device: torch.device) -> Resampler:
    return Resampler("bicubic", Image.BICUBIC)


@register_backbone("nearest", uses_prompt=False)
def _nearest(cfg: Any, device: torch.device) -> Resampler:
    return Resampler("nearest", Image.NEAREST)
