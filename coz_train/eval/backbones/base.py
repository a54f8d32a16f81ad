"""The SR backbone interface of the CoZ chain: a batch of LR images (+ prompts) -> 4x images.

A backbone is registered by name (`@register_backbone("name")`) with a builder taking the
`eval.backbone` config section and a torch device. `upscale` takes images of one size and
returns images `scale` times larger, or `size` x `size` when `size` is given: the one-step
baseline hands over a small crop and asks for the full output size, and each backbone brings the
crop to its own input the way its method does (OSEDiff upsamples bicubically straight to the
output size; a feed-forward 4x network gets the crop bicubic-resized to size / scale).
`uses_prompt` says whether the text changes the output (prompt-agnostic backbones still receive
the prompts, so a chain can run with any backbone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from PIL import Image


class SRBackbone(Protocol):
    name: str
    scale: int
    uses_prompt: bool

    def upscale(self, images: list[Image.Image], prompts: list[str], size: int | None = None) -> list[Image.Image]:
        """[N] images of size (w, h) and their prompts -> [N] images of (scale*w, scale*h), or (size, size)."""
        ...


def fit_input(images: list[Image.Image], size: int | None, scale: int) -> list[Image.Image]:
    """Bicubic-resize square inputs to size / scale, for backbones with a fixed 4x input -> output."""
    if size is None:
        return images
    if size % scale:
        raise ValueError(f"output size {size} is not a multiple of the backbone's scale {scale}.")
    side = size // scale
    return [im if im.size == (side, side) else im.resize((side, side), Image.BICUBIC) for im in images]


BackboneBuilder = Callable[[Any, torch.device], SRBackbone]
_BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def wrap(build: BackboneBuilder) -> BackboneBuilder:
        _BACKBONES[name] = build
        return build

    return wrap


def build_backbone(name: str, cfg: Any, device: torch.device) -> SRBackbone:
    if name not in _BACKBONES:
        raise KeyError(f"eval.backbone.name='{name}' is not a registered SR backbone: {sorted(_BACKBONES)}.")
    return _BACKBONES[name](cfg, device)
