"""Rewards selected and weighted by name: `rewards.<name>.weight` plus the reward's own parameters.

A reward is registered with the parameters it accepts, so a misspelt parameter or an unknown
reward name stops the run at start-up, before any model loads; a reward may also register a
`check(params, cfg)` that refuses bad values then (it runs for rewards with a non-zero weight).
Builders return TRL reward functions: `f(prompts=..., completions=..., **columns) -> list[float | None]`
with a `__name__` that TRL uses for its `rewards/<name>/mean` and `/std` logs.

Rewards built by one `build_rewards` call share the models they load through `shared_model(key, load)`:
the critic reward and the SR-quality reward's critic judge use one loaded critic, not two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

RewardFunc = Callable[..., list]


@dataclass(frozen=True)
class RewardSpec:
    name: str
    params: frozenset[str]
    build: Callable[[dict[str, Any], DictConfig], RewardFunc]
    check: Callable[[dict[str, Any], DictConfig | None], None] | None = None


_REGISTRY: dict[str, RewardSpec] = {}
_SHARED: list[dict[str, Any]] = []  # the models of the build_rewards call in progress


def register(name: str, params: tuple[str, ...] = (),
             check: Callable[[dict[str, Any], DictConfig | None], None] | None = None) -> Callable:
    def wrap(build: Callable[[dict[str, Any], DictConfig], RewardFunc]) -> Callable:
        _REGISTRY[name] = RewardSpec(name, frozenset(params), build, check)
        return build

    return wrap


@contextmanager
def _sharing_models() -> Iterator[None]:
    _SHARED.append({})
    try:
        yield
    finally:
        _SHARED.pop()


def shared_model(key: str, load: Callable[[], Any]) -> Any:
    """`load()` once per `build_rewards` call: every reward built by it that asks for `key` gets the same object.

    Outside a `build_rewards` call (a reward built on its own) this is just `load()`.
    """
    if not _SHARED:
        return load()
    models = _SHARED[-1]
    if key not in models:
        models[key] = load()
    return models[key]


def registered() -> list[str]:
    return sorted(_REGISTRY)


def reward_spec(name: str) -> RewardSpec:
    """The registration of reward `name`: its accepted parameters, builder and check (read-only)."""
    if name not in _REGISTRY:
        raise KeyError(f"rewards.{name}: no such reward; registered rewards are {registered()}.")
    return _REGISTRY[name]


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


def active_rewards(rewards_cfg: DictConfig, cfg: DictConfig | None = None) -> list[tuple[str, float, dict[str, Any]]]:
    """Validate the rewards section; return (name, weight, params) of those with a non-zero weight.

    `cfg`, the whole config, is handed to the rewards' own checks (those that compare with other sections).
    """
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
            if _REGISTRY[name].check is not None:
                _REGISTRY[name].check(params, cfg)
            active.append((name, weight, params))
    if not active:
        raise ValueError("Every reward has weight 0: GRPO needs at least one reward (see conf/rewards/).")
    return active


def build_rewards(cfg: DictConfig) -> tuple[list[RewardFunc], list[float]]:
    funcs, weights = [], []
    with _sharing_models():
        for name, weight, params in active_rewards(cfg.rewards, cfg):
            funcs.append(_REGISTRY[name].build(params, cfg))
            weights.append(weight)
    return funcs, weights
