"""`rewards.sr_quality.*`: the schema, and the checks that refuse a bad setting before any model loads."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from coz_train.rewards.sr_quality.scoring import METRIC_RANGES

KEY = "rewards.sr_quality"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class SRQualitySettings:
    """Every parameter of the reward but `weight` (conf/rewards/coz.yaml documents each)."""

    backbone: dict[str, Any] = field(default_factory=lambda: {"name": "osediff_sd3"})  # an eval backbone config
    metric: str = "niqe"  # niqe | brisque | piqe | musiq | maniqa | clipiqa (coz_train.image_quality)
    range: list[float] | None = None  # [lo, hi] mapped onto [0, 1]; None: METRIC_RANGES[metric]
    reference_aware: bool = False  # add the agreement of the output with the previous state's crop
    reference_weight: float = 1.0  # its weight beside the IQA score's 1
    reference_tolerance: float = 0.1  # mean abs error (0..1 pixel values) at which the agreement reaches 0
    critic_judge: bool = False  # add the critic's score of [previous state, SR output] + prompt
    critic_weight: float = 1.0  # its weight beside the IQA score's 1
    critic_instruction: str | None = None  # the judge's question ({prompt}, {score_max}); None: critic.instruction
    device: str = "auto"  # where the backbone and the metric run: auto (the training GPU, else cpu) | cpu | cuda:N
    batch_size: int | None = None  # candidates per backbone call; None: all of a reward call's candidates at once

    @property
    def metric_range(self) -> tuple[float, float]:
        lo, hi = self.range if self.range is not None else METRIC_RANGES[self.metric]
        return float(lo), float(hi)

    def part_weights(self) -> dict[str, float]:
        """The parts that are on, with their weights in the mean (see `scoring.combine`)."""
        weights = {"iqa": 1.0}
        if self.reference_aware:
            weights["reference"] = self.reference_weight
        if self.critic_judge:
            weights["critic"] = self.critic_weight
        return weights


def parse_settings(params: dict[str, Any]) -> SRQualitySettings:
    """The typed settings from the reward's parameters (weight removed); a wrong type or key names the key."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SRQualitySettings), params)
    except (ConfigKeyError, ValidationError) as err:
        raise ValueError(f"{KEY}.{err.full_key}: {err.msg.splitlines()[0]}") from None
    return SRQualitySettings(**OmegaConf.to_container(merged, resolve=True))


def backbone_config(settings: SRQualitySettings) -> DictConfig:
    """`rewards.sr_quality.backbone` over conf/eval/backbone/<name>.yaml, as `data.backbone` is read."""
    from coz_train.sr.backbones import backbone_section

    name = settings.backbone.get("name")
    if not name:
        raise ValueError(f"{KEY}.backbone.name is missing: name an SR backbone (osediff_sd3).")
    return backbone_section(name, {k: v for k, v in settings.backbone.items() if k != "name"}, f"{KEY}.backbone")


def check_settings(params: dict[str, Any], cfg: DictConfig | None) -> SRQualitySettings:
    """Everything that can be refused without loading a model; `cfg` (the whole config) when there is one."""
    from coz_train.sr.backbones import backbone_uses_prompt

    s = parse_settings(params)
    if s.metric not in METRIC_RANGES:
        raise ValueError(f"{KEY}.metric='{s.metric}' is not a no-reference metric of the evaluation: use one of "
                         f"{sorted(METRIC_RANGES)}.")
    if s.range is not None and (len(s.range) != 2 or not s.range[0] < s.range[1]):
        raise ValueError(f"{KEY}.range={s.range} must be [lo, hi] with lo < hi (or null for the metric's default "
                         f"range {list(METRIC_RANGES[s.metric])}).")
    for name in ("reference_weight", "critic_weight"):
        if getattr(s, name) < 0:
            raise ValueError(f"{KEY}.{name}={getattr(s, name)} must be >= 0.")
    if s.reference_tolerance <= 0:
        raise ValueError(f"{KEY}.reference_tolerance={s.reference_tolerance} must be > 0.")
    if s.batch_size is not None and s.batch_size < 1:
        raise ValueError(f"{KEY}.batch_size={s.batch_size} must be >= 1 (or null: all candidates in one call).")
    if not _DEVICE.match(s.device):
        raise ValueError(f"{KEY}.device='{s.device}' is not auto, cpu or cuda[:N].")
    bcfg = backbone_config(s)
    if not backbone_uses_prompt(bcfg.name, f"{KEY}.backbone.name"):
        raise ValueError(
            f"{KEY}.backbone.name={bcfg.name} ignores its prompt: every candidate prompt of a group would get the "
            f"same SR output and the same score, so this reward would give zero advantage and teach nothing. Use a "
            f"prompt-conditioned backbone ({KEY}.backbone.name=osediff_sd3) or turn the reward off "
            f"({KEY}.weight=0).")
    if bcfg.name == "osediff_sd3":
        if not bcfg.lora_dir:
            raise ValueError(f"{KEY}.backbone.lora_dir is not set: point it at the folder with the OSEDiff-SD3 LoRA "
                             "files (model_20001.pkl, vae_encoder_20001.pt) or a Chain-of-Zoom ckpt/ folder.")
        if not Path(bcfg.lora_dir).expanduser().is_dir():
            raise FileNotFoundError(f"{KEY}.backbone.lora_dir={bcfg.lora_dir} is not a folder.")
    if cfg is not None:
        _check_against(s, cfg)
    return s


def _check_against(s: SRQualitySettings, cfg: DictConfig) -> None:
    if cfg.data.single_image_prompt:
        raise ValueError(f"{KEY} super-resolves the crop of the previous state, which data.single_image_prompt=true "
                         f"samples do not hold: set data.single_image_prompt=false or {KEY}.weight=0.")
    from coz_train.rewards.critic.reward import BACKENDS

    if s.critic_judge and cfg.critic.get("backend") not in BACKENDS:
        raise ValueError(f"{KEY}.critic_judge=true uses the critic group, but critic.backend="
                         f"'{cfg.critic.get('backend')}' is not one of {sorted(BACKENDS)}.")
