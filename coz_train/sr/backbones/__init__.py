"""SR backbones for the CoZ chain, loaded by name (each module registers its own)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from coz_train.sr.backbones.base import SRBackbone, build_backbone, register_backbone, registered_uses_prompt

# name -> module that registers it; imported only when that backbone is used (diffusers is heavy)
BACKBONE_MODULES = {
    "bicubic": "resample",
    "nearest": "resample",
    "realesrgan_x4plus": "realesrgan",
    "osediff_sd3": "osediff_sd3",
}


def registered_backbones() -> list[str]:
    return sorted(BACKBONE_MODULES)


def _import(name: str, key: str) -> None:
    if name not in BACKBONE_MODULES:
        raise KeyError(f"{key}='{name}' is not one of {registered_backbones()}.")
    importlib.import_module(f"coz_train.sr.backbones.{BACKBONE_MODULES[name]}")  # no weights load here


def load_backbone(name: str, cfg: Any, device: torch.device) -> SRBackbone:
    _import(name, "eval.backbone.name")
    return build_backbone(name, cfg, device)


def backbone_uses_prompt(name: str, key: str = "eval.backbone.name") -> bool:
    """Whether backbone `name` is prompt-conditioned, from its registration: no weights are loaded."""
    _import(name, key)
    return registered_uses_prompt(name)


def backbone_section(name: str, overrides: dict[str, Any], key: str) -> DictConfig:
    """A backbone's config: schema defaults <- conf/eval/backbone/<name>.yaml <- `overrides` (the non-null ones).

    `key` names where the overrides come from (`data.backbone`, `rewards.sr_quality.backbone`) in errors.
    """
    from coz_train.config import config_dir
    from coz_train.eval_sections import BackboneSection

    cfg = OmegaConf.structured(BackboneSection)
    shipped = Path(config_dir()) / "eval" / "backbone" / f"{name}.yaml"
    if shipped.is_file():
        cfg = OmegaConf.merge(cfg, OmegaConf.load(shipped))
    try:
        cfg = OmegaConf.merge(cfg, {k: v for k, v in overrides.items() if v is not None})
    except (ConfigKeyError, ValidationError) as err:
        raise ValueError(f"{key}.{err.full_key}: {err.msg.splitlines()[0]} (the keys of an eval backbone config are "
                         f"{sorted(BackboneSection.__dataclass_fields__)}).") from None
    cfg.name = name
    return cfg


__all__ = [
    "SRBackbone", "backbone_section", "backbone_uses_prompt", "load_backbone", "register_backbone",
    "registered_backbones",
]
