"""Rewards selected and weighted by name: `rewards.<name>.weight` plus the reward's own parameters.

A reward is registered with the parameters it accepts, so a misspelt parameter or an unknown
reward name stops the run at start-up, before any model loads. Builders return TRL reward
functions: `f(prompts=..., completions=..., **columns) -> list[float | None]` with a `__name__`
that TRL uses for its `rewards/<name>/mean` and `/std` logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

RewardFunc = Callable[..., list]


@dataclass(frozen=True)
class RewardSpec:
    name: str
    params: frozenset[str]
    build: Callable[[dict[str, Any], DictConfig], RewardFunc]


_REGISTRY: dict[str, RewardSpec] = {}


def register(name: str, params: tuple[str, ...] = ()) -> Callable:
    def wrap(build: Callable[[dict[str, Any], DictConfig], RewardFunc]) -> Callable:
        _REGISTRY[name] = RewardSpec(name, frozenset(params), build)
        return build

    return wrap


def registered() -> list[str]:
    return sorted(_REGISTRY)


class NamedReward:
    """A reward function with its parameters bound, logged by TRL under `name`.

    A class rather than `functools.partial`: TRL names a partial after the wrapped function, so
    two differently configured uses of one function would share a log key.
    """

    def __init__(self, func: Callable, name: str, **params: Any):
        self.func, self.__name__, self.params = func, name, params

    def __call__(self, prompts: list | None = None, completions: list | None = None, **kwargs: Any) -> list:
        return self.func(prompts=prompts, completions=completions, **{**kwargs, **self.params})

    def __repr__(self) -> str:
        return f"NamedReward({self.__name__}, {self.params})"


def named(func: Callable, name: str, **params: Any) -> NamedReward:
    return NamedReward(func, name, **params)


def active_rewards(rewards_cfg: DictConfig) -> list[tuple[str, float, dict[str, Any]]]:
    """Validate the rewards section; return (name, weight, params) of those with a non-zero weight."""
    active = []
    for name, entry in rewards_cfg.items():
        if name not in _REGISTRY:
            raise KeyError(f"rewards.{name}: no such reward; registered rewards are {registered()}.")
        params = OmegaConf.to_container(entry, resolve=True) if entry is not None else {}
        if "weight" not in params:
            raise KeyError(f"rewards.{name}.weight is missing: give every reward a weight (0 disables it).")
        weight = float(params.pop("weight"))
        unknown = set(params) - _REGISTRY[name].params
        if unknown:
            raise KeyError(
                f"rewards.{name}: unknown parameter(s) {sorted(unknown)}; "
                f"'{name}' accepts {sorted(_REGISTRY[name].params) or 'only weight'}."
            )
        if weight != 0.0:
            active.append((name, weight, params))
    if not active:
        raise ValueError("Every reward has weight 0: GRPO needs at least one reward (see conf/rewards/).")
    return active


def build_rewards(cfg: DictConfig) -> tuple[list[RewardFunc], list[float]]:
    funcs, weights = [], []
    for name, weight, params in active_rewards(cfg.rewards):
        funcs.append(_REGISTRY[name].build(params, cfg))
        weights.append(weight)
    return funcs, weights
