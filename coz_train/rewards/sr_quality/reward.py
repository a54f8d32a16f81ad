"""The SR-quality reward: each candidate prompt drives the SR backbone, and the output it gives is scored."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image

from coz_train.rewards.batches import in_batches
from coz_train.rewards.critic.common import critic_device, frozen
from coz_train.rewards.critic.reward import CriticReward, load_critic_backend, with_instruction
from coz_train.rewards.registry import register, shared_model
from coz_train.rewards.sr_quality.scoring import agreement, combine, low_frequency_error, unit_score
from coz_train.rewards.sr_quality.settings import KEY, SRQualitySettings, backbone_config, check_settings
from coz_train.rewards.text import completion_text

log = logging.getLogger(__name__)

NAME = "sr_quality"  # the registered name: TRL logs rewards/sr_quality/*, the parts go to sr_quality/<part>


def frozen_backbone(backbone: Any) -> Any:
    """eval() and requires_grad False on every torch module the backbone holds (its attributes and lists of them)."""
    for value in vars(backbone).values():
        for module in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(module, torch.nn.Module):
                frozen(module)
    return backbone


def load_metric(name: str, device: torch.device) -> Any:
    """The evaluation's metric `name`, or an error saying why it cannot be computed here and what to do."""
    from coz_train.image_quality import build_metrics

    metrics, unavailable = build_metrics([name], device)
    if name not in metrics:
        raise ValueError(f"{KEY}.metric={name} cannot be computed here: {unavailable.get(name)}. NIQE needs only its "
                         "parameter file (python -m coz_train.image_quality --fetch-params); MUSIQ, MANIQA and CLIPIQA "
                         f"download their weights once. Choose another {KEY}.metric or make the weights available.")
    return metrics[name]


class SRQualityReward:
    """TRL reward function: super-resolve the zoom crop with each candidate prompt and score the output in [0, 1].

    The parts (`scoring`): `iqa` (the metric mapped to [0, 1]), `reference` (agreement with the previous state's
    crop, with reference_aware) and `critic` (the critic judging [previous state, SR output] + prompt, with
    critic_judge), mixed by `scoring.combine`. Each part's mean is logged as `sr_quality/<part>` beside TRL's
    `rewards/sr_quality/mean`.
    """

    __name__ = NAME

    def __init__(self, backbone: Any, metric: Any, settings: SRQualitySettings, judge: CriticReward | None = None):
        if settings.critic_judge and judge is None:
            raise ValueError(f"{KEY}.critic_judge=true needs the critic judge.")
        self.backbone, self.metric, self.settings, self.judge = backbone, metric, settings, judge

    def super_resolve(self, crops: list[Image.Image], texts: list[str]) -> list[Image.Image]:
        """[N] crops of the previous states + [N] prompts -> [N] SR outputs, `batch_size` per backbone call."""
        batch = self.settings.batch_size or max(1, len(crops))
        with torch.inference_mode():
            return in_batches(lambda a, b: self.backbone.upscale(crops[a:b], texts[a:b]), len(crops), batch,
                              f"SR backbone {self.backbone.name}", f"{KEY}.batch_size")

    def score(self, outputs: list[Image.Image], crops: list[Image.Image], previous: list[Image.Image],
              texts: list[str], log_metric: Callable[[str, float], None] | None = None) -> dict[str, list]:
        """Every part for each SR output (with the crop it was made from, its previous state and its prompt)."""
        lo, hi = self.settings.metric_range
        started = time.perf_counter()
        with torch.inference_mode():
            raw = [self.metric(out) for out in outputs]
        parts: dict[str, list] = {"iqa": [unit_score(v, lo, hi, self.metric.higher_is_better) for v in raw]}
        _log_mean(log_metric, self.metric.name, raw)
        _log_mean(log_metric, "metric_s", [time.perf_counter() - started])
        if self.settings.reference_aware:
            errors = [low_frequency_error(out, crop) for out, crop in zip(outputs, crops, strict=True)]
            parts["reference"] = [agreement(e, self.settings.reference_tolerance) for e in errors]
            _log_mean(log_metric, "reference_error", errors)
        if self.settings.critic_judge:
            judged = None if log_metric is None else (lambda k, v: log_metric(f"{NAME}/{k}", v))
            views = [[prev, out] for prev, out in zip(previous, outputs, strict=True)]
            parts["critic"] = self.judge(completions=texts, images=views, log_metric=judged)
        return parts

    def __call__(self, prompts: list | None = None, completions: list | None = None, images: list | None = None,
                 crop_box: list | None = None, log_metric: Callable[[str, float], None] | None = None,
                 **kwargs: Any) -> list[float | None]:
        completions = completions or []
        if images is None or crop_box is None or not len(images) == len(completions) == len(crop_box):
            raise ValueError(f"{KEY} needs the samples' `images` ([previous state, zoomed image]) and `crop_box` "
                             "columns, one per completion (the zoom pairs of coz_train.data hold both).")
        texts = [completion_text(c) for c in completions]
        previous = [pair[0] for pair in images]
        crops = [prev.crop(tuple(box)) for prev, box in zip(previous, crop_box, strict=True)]  # the backbone's input
        # The G candidates of a group share a crop; identical (crop, prompt) pairs are super-resolved once.
        index: dict[tuple[str, str], int] = {}  # (crop digest, prompt) -> its unique pair
        rows: list[int] = []  # the first candidate of each unique pair
        which: list[int] = []  # each candidate's unique pair
        for i, (crop, box, text) in enumerate(zip(crops, crop_box, texts, strict=True)):
            key = (_digest(crop, box), text)
            if key not in index:
                index[key] = len(rows)
                rows.append(i)
            which.append(index[key])
        started = time.perf_counter()
        outputs = self.super_resolve([crops[i] for i in rows], [texts[i] for i in rows])
        _log_mean(log_metric, "backbone_s", [time.perf_counter() - started])
        parts = self.score(outputs, [crops[i] for i in rows], [previous[i] for i in rows], [texts[i] for i in rows],
                           log_metric)
        rewards = combine(parts, self.settings.part_weights())
        for name, values in parts.items():
            _log_mean(log_metric, name, [values[j] for j in which])
        if log_metric is not None and which:
            log_metric(f"{NAME}/undefined", sum(rewards[j] is None for j in which) / len(which))
        return [rewards[j] for j in which]


def _digest(crop: Image.Image, box: Any) -> str:
    return hashlib.blake2b(crop.tobytes() + repr((crop.size, tuple(box))).encode(), digest_size=16).hexdigest()


def _log_mean(log_metric: Callable[[str, float], None] | None, name: str, values: list) -> None:
    scored = [v for v in values if v is not None and math.isfinite(v)]
    if log_metric is not None and scored:
        log_metric(f"{NAME}/{name}", sum(scored) / len(scored))


def build_judge(cfg: DictConfig, settings: SRQualitySettings) -> CriticReward:
    """The critic group's critic (the one the critic reward uses, when it is on) judging SR outputs."""
    backend = shared_model("critic", lambda: load_critic_backend(cfg))
    if settings.critic_instruction:
        backend = with_instruction(backend, settings.critic_instruction)
    return CriticReward(backend, cfg.critic.score_max, cfg.critic.batch_size, name=f"{cfg.critic.name_or_path} (SR judge)")


@register(NAME, params=tuple(SRQualitySettings.__dataclass_fields__), check=check_settings)
def build_sr_quality_reward(params: dict[str, Any], cfg: DictConfig) -> SRQualityReward:
    from coz_train.sr.backbones import load_backbone

    settings = check_settings(params, cfg)
    device = critic_device(settings.device)  # the critic's rule: auto = this rank's GPU, else the CPU
    metric = load_metric(settings.metric, device)
    bcfg = backbone_config(settings)
    backbone = frozen_backbone(load_backbone(bcfg.name, bcfg, device))
    if backbone.scale != cfg.data.scale:
        raise ValueError(f"{KEY}.backbone.name={bcfg.name} is a {backbone.scale}x backbone but data.scale="
                         f"{cfg.data.scale}: the zoom crops must be 1/{backbone.scale} of each side.")
    judge = build_judge(cfg, settings) if settings.critic_judge else None
    log.info("SR-quality reward: %s on %s, %s mapped from %s to [0, 1]%s%s", bcfg.name, device, settings.metric,
             list(settings.metric_range), ", reference-aware" if settings.reference_aware else "",
             ", critic judge" if judge else "")
    return SRQualityReward(backbone, metric, settings, judge)
