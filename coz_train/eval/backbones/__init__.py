"""SR backbones for the CoZ chain, loaded by name (each module registers its own)."""

from __future__ import annotations

import importlib
from typing import Any

import torch

from coz_train.eval.backbones.base import SRBackbone, build_backbone, register_backbone

# name -> module that registers it; imported only when that backbone is used (diffusers is heavy)
BACKBONE_MODULES = {
    "bicubic": "resample",
    "nearest": "resample",
    "realesrgan_x4plus": "realesrgan",
    "osediff_sd3": "osediff_sd3",
}


def registered_backbones() -> list[str]:
    return sorted(BACKBONE_MODULES)


def load_backbone(name: str, cfg: Any, device: torch.device) -> SRBackbone:
    if name not in BACKBONE_MODULES:
        raise KeyError(f"eval.backbone.name='{name}' is not one of {registered_backbones()}.")
    importlib.import_module(f"coz_train.eval.backbones.{BACKBONE_MODULES[name]}")
    return build_backbone(name, cfg, device)


__all__ = ["SRBackbone", "load_backbone", "register_backbone", "registered_backbones"]
