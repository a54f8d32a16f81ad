"""Rewards for the CoZ prompt VLM, registered by name (see `registry`).

`phrase_exclusion_reward` and `repetition_reward` are plain TRL reward functions; the critic
reward is built from the `critic` config group; `sr_quality` runs an SR backbone with each prompt
and scores the image it makes (off by default); `validity` pays for prompts of content words in Latin
script (off by default).
"""

from typing import Any

from omegaconf import DictConfig

from coz_train.preflight import critic_needed
from coz_train.rewards import (
    critic,  # noqa: E402,F401  (registers "critic")
    sr_quality,  # noqa: E402,F401  (registers "sr_quality")
    validity,  # noqa: E402,F401  (registers "validity", off by default)
)
from coz_train.rewards.phrase import DEFAULT_PHRASES, phrase_exclusion_reward
from coz_train.rewards.registry import active_rewards, build_rewards, named, register, registered
from coz_train.rewards.repetition import repetition_reward


@register("phrase_exclusion", params=("phrases",))
def _build_phrase(params: dict[str, Any], cfg: DictConfig):
    return named(phrase_exclusion_reward, "phrase_exclusion", phrases=tuple(params.get("phrases", DEFAULT_PHRASES)))


@register("repetition", params=("n", "max_penalty"))
def _build_repetition(params: dict[str, Any], cfg: DictConfig):
    return named(repetition_reward, "repetition", n=int(params.get("n", 3)), max_penalty=float(params.get("max_penalty", -1.0)))


__all__ = [
    "DEFAULT_PHRASES", "active_rewards", "build_rewards", "critic_needed", "phrase_exclusion_reward", "registered",
    "repetition_reward",
]
