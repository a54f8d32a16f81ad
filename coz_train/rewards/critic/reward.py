"""The critic reward: batches of candidates scored by the configured backend, registered as "critic"."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from coz_train.perf.prefix import unwrap
from coz_train.perf.replacement import Replacement, recorded
from coz_train.rewards.batches import in_batches
from coz_train.rewards.critic.client import ServerCritic
from coz_train.rewards.critic.common import BROKEN_LOAD_HINT, CriticScoringError, critic_device
from coz_train.rewards.critic.hf import HFCritic
from coz_train.rewards.critic.internvl_remote import InternVLRemoteCritic
from coz_train.rewards.registry import register, shared_model
from coz_train.rewards.text import completion_text

log = logging.getLogger(__name__)

BACKENDS = {"hf": HFCritic, "internvl_remote": InternVLRemoteCritic, "server": ServerCritic}


class CriticReward:
    """TRL reward function scoring each completion with the critic, in batches of critic.batch_size."""

    __name__ = "critic"

    def __init__(self, backend: Any, score_max: int, batch_size: int, name: str = "critic"):
        self.backend, self.score_max, self.batch_size, self.name = backend, score_max, batch_size, name

    def __call__(self, prompts: list | None = None, completions: list | None = None, images: list | None = None,
                 log_metric: Any = None, **kwargs: Any) -> list[float | None]:
        completions = completions or []
        if images is None or len(images) != len(completions):
            raise ValueError("The critic reward needs the samples' `images` column ([previous state, zoomed image]).")
        texts = [completion_text(c) for c in completions]
        images = list(images)
        scores = in_batches(lambda a, b: self.backend.score(images[a:b], texts[a:b]), len(texts), self.batch_size,
                            "Critic", "critic.batch_size")
        self._check(scores)
        rewards = [None if s is None else s / self.score_max for s in scores]
        if log_metric is not None and rewards:
            log_metric("critic/unparsable", sum(r is None for r in rewards) / len(rewards))
        return rewards

    def _check(self, scores: list[float | None]) -> None:
        """A batch with a NaN score, or with no score at all, is an error (see `CriticScoringError`)."""
        bad = sum(1 for s in scores if s is not None and not math.isfinite(s))
        if bad:
            raise CriticScoringError(f"Critic {self.name}: {bad} of {len(scores)} scores are NaN or infinite; "
                                     f"{BROKEN_LOAD_HINT}.")
        if scores and all(s is None for s in scores):
            raise CriticScoringError(
                f"Critic {self.name} gave no score for any of the {len(scores)} candidates (every answer unparsable "
                "or empty): check that critic.max_new_tokens leaves room for the number, that critic.instruction asks "
                f"for an integer 0..critic.score_max={self.score_max}, and {BROKEN_LOAD_HINT} (a model with broken "
                "weights writes empty answers)."
            )


def critic_prefix_wanted(cfg: DictConfig) -> bool:
    """`perf.critic_prefix`, refused (before anything loads) for backends it cannot apply to."""
    perf = cfg.get("perf")
    wanted = bool(perf.get("critic_prefix", False)) if perf is not None else False
    if wanted and cfg.critic.backend != "hf":
        hint = (" (with critic.backend=server, start the critic server with perf.critic_prefix=true instead)"
                if cfg.critic.backend == "server" else "")
        raise ValueError(f"perf.critic_prefix works with critic.backend=hf, not '{cfg.critic.backend}': "
                         f"set perf.critic_prefix=false{hint}.")
    return wanted


def install_critic_switches(backend: Any, perf: Any) -> list[Replacement]:
    """The `perf` switches of an `hf` critic backend, each change made and returned (undo them to take the
    switches off): `perf.critic_prefix` (shared-prefix scoring), `perf.text_cache` (each batch encoded with
    its shared heads processed once: `templated.py`), `perf.image_cache` (its processor's image cache), and with
    both caches' `perf.pixel_handles` a frozen-vision feature cache on the critic reading the processor's pixel
    handles (its vision tower is frozen like the rest of it)."""
    from coz_train.perf.image_cache import install_image_cache
    from coz_train.perf.prefix import check_supported
    from coz_train.perf.vision_cache import install_vision_cache
    from coz_train.rewards.critic.templated import TemplatedEncoder

    perf = perf or {}
    changes: list[Replacement] = []

    if perf.get("critic_prefix") and not backend.shared_prefix:
        check_supported(backend.model, "perf.critic_prefix")
        changes.append(Replacement(backend, "shared_prefix", True, "critic_prefix").apply())
    if perf.get("text_cache") and backend.encoder is None:
        changes.append(Replacement(backend, "encoder", TemplatedEncoder(backend.processor), "text_cache").apply())
    if perf.get("image_cache"):
        handles = bool(perf.get("pixel_handles"))
        cache = recorded(changes, backend.processor, "image_processor", "image_cache",
                         lambda: install_image_cache(backend.processor, handles=handles))
        if handles:
            backbone = unwrap(backend.model).model
            vision = recorded(changes, backbone, "vision_cache", "pixel_handles, critic",
                              lambda: install_vision_cache(backend.model, int(perf.get("vision_cache_images", 64))))
            changes.append(Replacement(vision, "pixel_source", cache, "pixel_handles").apply())
    return changes


def load_critic_backend(cfg: DictConfig) -> Any:
    """The critic of the `critic` group, loaded frozen on critic.device (or a client of critic.url)."""
    critic = cfg.critic
    if critic.backend not in BACKENDS:
        raise ValueError(f"critic.backend='{critic.backend}' is not one of {sorted(BACKENDS)}.")
    if critic.scoring not in ("generate", "logits"):
        raise ValueError(f"critic.scoring='{critic.scoring}' must be 'generate' or 'logits'.")
    shared_prefix = critic_prefix_wanted(cfg)
    if critic.backend == "server":
        backend = ServerCritic(critic)
        log.info("Critic %s at %s (%s scoring)", backend.model_name, backend.url, critic.scoring)
        return backend
    backend = BACKENDS[critic.backend](critic, critic_device(critic.device))
    if critic.backend == "hf":
        for change in install_critic_switches(backend, cfg.get("perf")):
            log.info("critic: %s", change)
    log.info("Critic %s loaded (%s backend, %s scoring%s)", critic.name_or_path, critic.backend, critic.scoring,
             ", shared prefix" if shared_prefix else "")
    return backend


def with_instruction(backend: Any, instruction: str) -> Any:
    """The same loaded critic (model, processor or server connections shared) asking `instruction` instead.

    Every backend formats its question from `self.cfg` (`common.instruction_text`), so a shallow copy with
    another cfg asks another question of the same weights.
    """
    judged = copy.copy(backend)
    judged.cfg = OmegaConf.merge(backend.cfg, {"instruction": instruction})
    return judged


@register("critic")
def build_critic_reward(params: dict[str, Any], cfg: DictConfig) -> CriticReward:
    backend = shared_model("critic", lambda: load_critic_backend(cfg))  # one critic for every reward that judges
    return CriticReward(backend, cfg.critic.score_max, cfg.critic.batch_size, name=cfg.critic.name_or_path)
