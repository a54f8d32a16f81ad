"""The checks of a training run that need no model library, run before torch, transformers or TRL load.

`python -m coz_train` composes the config (schema-checked by Hydra), then `preflight(cfg)` checks the counts,
the run folder and every model the run will load:
a run that cannot start says so within about the time of composing its config (`scripts/startup_bench.py`
measures it), naming every missing model in one error, instead of naming the policy, and on the next try the
critic, each after the model libraries have loaded. Only then does `coz_train.train` import the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from coz_train.hub import ModelNotAvailableError, locate_model

log = logging.getLogger(__name__)

POSITIVE_COUNTS = ("max_steps", "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
                   "max_completion_length", "save_steps", "logging_steps")


def check_run_config(cfg: DictConfig) -> None:
    """Counts and the run folder, before anything is resolved or loaded."""
    for key in POSITIVE_COUNTS:
        value = cfg.grpo.get(key)
        if value is not None and value <= 0:
            raise ValueError(f"grpo.{key}={value:g} must be positive"
                             + (" (the number of optimizer steps to train)." if key == "max_steps" else "."))
    if cfg.grpo.num_generations < 2:
        raise ValueError(f"grpo.num_generations={cfg.grpo.num_generations}: GRPO compares completions within a group; "
                         "use at least 2.")
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir='{cfg.output_dir}' is a file, not a folder: point output_dir (or hydra.run.dir) "
                         "at a new or existing run folder.")


def critic_needed(active: list[tuple[str, float, dict[str, Any]]]) -> bool:
    """Whether an active reward ((name, weight, params) with a non-zero weight) loads the critic group's model."""
    return any(name == "critic" or (name == "sr_quality" and params.get("critic_judge")) for name, _, params in active)


def weighted_rewards(rewards: DictConfig) -> list[tuple[str, float, dict[str, Any]]]:
    """(name, weight, params) of the rewards with a non-zero weight, as configured (the reward registry checks
    names and parameters when the rewards are built; here only which models they need matters)."""
    active = []
    for name, entry in rewards.items():
        params = OmegaConf.to_container(entry, resolve=True) if entry is not None else {}
        weight = params.pop("weight", 0.0) if isinstance(params, dict) else 0.0
        if weight:
            active.append((str(name), float(weight), params))
    return active


def run_models(cfg: DictConfig) -> list[tuple[str, str, str | None]]:
    """(config key, name, revision) of every model the run loads: the policy, and the critic when a reward with a
    non-zero weight needs it and it runs in this process (not behind `critic.backend=server`)."""
    models = [("policy.name_or_path", cfg.policy.name_or_path, cfg.policy.revision)]
    if critic_needed(weighted_rewards(cfg.rewards)) and cfg.critic.backend != "server":
        models.append(("critic.name_or_path", cfg.critic.name_or_path, cfg.critic.revision))
    return models


def check_models(models: list[tuple[str, str, str | None]]) -> None:
    """Every model that cannot be had, in one `ModelNotAvailableError` (each with what to do)."""
    problems = []
    for key, name, revision in models:
        try:
            locate_model(name, key, revision)
        except ModelNotAvailableError as err:
            problems.append(str(err))
    if len(problems) == 1:
        raise ModelNotAvailableError(problems[0])
    if problems:
        raise ModelNotAvailableError(f"{len(problems)} models of this run cannot be loaded.\n" + "\n".join(problems))


@dataclass(frozen=True)
class Preflight:
    """A run that passed `preflight`: the models it will load, each reachable, and where it resumes."""

    models: tuple[tuple[str, str, str | None], ...]  # (config key, name, revision)
    resume: str | None  # the checkpoint to resume from (resume=auto|<path>), None for a fresh start


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint `resume` names: none, the newest complete one in the run folder (auto), or a path."""
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        from coz_train.checkpoints import latest_complete  # a run folder to read: the libraries may load now

        found = latest_complete(cfg.output_dir)
        log.info("resume=auto: %s", found or "no complete checkpoint found, starting fresh")
        return str(found) if found else None
    if not Path(cfg.resume).is_dir():
        raise FileNotFoundError(f"resume='{cfg.resume}' is not a checkpoint folder (use resume=auto|none|<checkpoint-N path>).")
    return cfg.resume


def preflight(cfg: DictConfig) -> Preflight:
    """Everything about a training run that can be checked without a model library; `coz_train.train.check_run`
    goes on from here with the checks that need one."""
    check_run_config(cfg)
    if critic_needed(weighted_rewards(cfg.rewards)) and cfg.critic.backend == "server" and not cfg.critic.url:
        raise ValueError("critic.backend=server needs critic.url=http://<host>:<port> (see conf/critic/server.yaml).")
    models = run_models(cfg)
    check_models(models)
    return Preflight(tuple(models), resume_checkpoint(cfg))
