"""The SR backbone interface of the CoZ chain: a batch of LR images (+ prompts) -> 4x images.

A backbone is registered by name (`@register_backbone("name")`) with a builder taking the
`eval.backbone` config section and a torch device. `upscale` takes images of one size and
returns images `scale` times larger; `uses_prompt` says whether the text changes the output
(prompt-agnostic backbones still receive the prompts, so a chain can run with any backbone).
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

    def upscale(self, images: list[Image.Image], prompts: list[str]) -> list[Image.Image]:
        """[N] images of size (w, h) and their prompts -> [N] images of size (scale*w, scale*h)."""
        ...


BackboneBuilder = Callable[[Any, torch.device], SRBackbone]
_BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def wrap(build: BackboneBuilder) -> BackboneBuilder:
        _BACKBONES[name] = build
        return build

    return wrap


def registered_backbones() -> list[str]:
    return sorted(_BACKBONES)


def build_backbone(name: str, cfg: Any, device: torch.device) -> SRBackbone:
    if name not in _BACKBONES:
        raise KeyError(f"eval.backbone.name='{name}' is not a registered SR backbone: {registered_backbones()}.")
    return _BACKBONES[name](cfg, device)
