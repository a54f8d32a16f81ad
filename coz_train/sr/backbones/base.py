"""The SR backbone interface of the CoZ chain: a batch of LR images (+ prompts) -> 4x images.

A backbone is registered by name (`@register_backbone("name", uses_prompt=...)`) with a builder taking the
`eval.backbone` config section and a torch device. `upscale` takes images of one size and
returns images `scale` times larger, or `size` x `size` when `size` is given: the one-step
baseline hands over a small crop and asks for the full output size, and each backbone brings the
crop to its own input the way its method does (OSEDiff upsamples bicubically straight to the
output size; a feed-forward 4x network gets the crop bicubic-resized to size / scale).
`uses_prompt` says whether the text changes the output (prompt-agnostic backbones still receive
the prompts, so a chain can run with any backbone). The registration declares it as well, so a
caller can ask before any weights load (`backbone_uses_prompt`; the SR-quality reward refuses a
backbone that ignores prompts); a built backbone whose attribute disagrees with its registration
is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image


class SRBackbone(Protocol):
    name: str
    scale: int
    uses_prompt: bool

    def upscale(self, images: list[Image.Image], prompts: list[str], size: int | None = None) -> list[Image.Image]:
        """[N] images of size (w, h) and their prompts -> [N] images of (scale*w, scale*h), or (size, size)."""
        ...


@runtime_checkable
class LatentSRBackbone(SRBackbone, Protocol):
    """A backbone whose step runs in a latent space that can be tiled (OSEDiff-SD3): the full-image chain
    (`coz_train.sr.full_image`) encodes a whole image once, steps each latent tile with its own prompt and blends
    the tiles in latent space, as the official full-image inference does. `upscale` = decode(denoise(encode(x)))."""

    latent_factor: int  # output px per latent px (the VAE's downsampling)
    latent_multiple: int  # an encoded or stepped image's side in output px must be a multiple of this

    def encode_latents(self, images: list[Image.Image]) -> torch.Tensor:
        """[N] images of one size, already at the output size -> latents [N, C, H/f, W/f]."""
        ...

    def denoise_latents(self, z: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Latents [N, C, h, w] and one prompt each -> the stepped latents, same shape."""
        ...

    def decode_latents(self, z: torch.Tensor, shift: bool = True) -> list[Image.Image]:
        """Latents [N, C, h, w] -> [N] images (f*w, f*h)."""
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
_USES_PROMPT: dict[str, bool] = {}


def register_backbone(name: str, *, uses_prompt: bool) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def wrap(build: BackboneBuilder) -> BackboneBuilder:
        _BACKBONES[name] = build
        _USES_PROMPT[name] = uses_prompt
        return build

    return wrap


def _check_registered(name: str) -> None:
    if name not in _BACKBONES:
        raise KeyError(f"eval.backbone.name='{name}' is not a registered SR backbone: {sorted(_BACKBONES)}.")


def registered_uses_prompt(name: str) -> bool:
    """What the registration of `name` declares: does its text prompt change the output?"""
    _check_registered(name)
    return _USES_PROMPT[name]


def build_backbone(name: str, cfg: Any, device: torch.device) -> SRBackbone:
    _check_registered(name)
    backbone = _BACKBONES[name](cfg, device)
    if bool(backbone.uses_prompt) != _USES_PROMPT[name]:
        raise TypeError(f"SR backbone '{name}' was registered with uses_prompt={_USES_PROMPT[name]}, but the built "
                        f"{type(backbone).__name__} says uses_prompt={backbone.uses_prompt}: fix its registration.")
    return backbone
