"""Runs that differ only in a seed are one group: replicates of one condition, not different conditions.

A run's subject is what it evaluates: its prompt VLM (`policy`), its user prompt, and, when a method uses
the adapter (a `vlm+adapter` source), the adapter. An adapter that a training run of this project wrote
(`<train run>/adapter` or `<train run>/checkpoint-N`) is known by that run's config
(`<train run>/.hydra/config.yaml`, the resolved-at-launch config Hydra writes) less its seeds
(SEED_KEYS) and the keys that only say where and how the run was done (TRAINING_RUN_ONLY_KEYS), plus
the folder (`adapter` or `checkpoint-N`: another step is another adapter). Any other adapter (the
released checkpoint-10000, a folder without its training config) is known by its path and has no
training seed.

Automatic groups: runs with the same subject whose seeds (training seed, eval `seed`) all differ. Runs
with the same subject and the same seeds are repeats, not replicates: each stays a group of its own,
with a warning. `--group name=run,run,...` makes a group explicitly (its runs are not grouped again);
`--no-seed-groups` keeps every other run on its own.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from coz_train.eval.compare.runs import EvalRun

log = logging.getLogger(__name__)

SEED_KEYS = ("seed", "grpo.seed", "grpo.data_seed")
# where and how a training run was done, not what it trained
TRAINING_RUN_ONLY_KEYS = ("output_dir", "resume", "experiment_name", "cpu_threads", "logging", "eval_during_training",
                          "grpo.output_dir", "grpo.run_name", "grpo.logging_dir", "grpo.report_to", "grpo.save_steps",
                          "grpo.save_total_limit", "grpo.logging_steps", "grpo.logging_first_step", "hydra")
ADAPTER_SOURCE = "vlm+adapter"


@dataclass(frozen=True)
class Identity:
    subject: str              # what the run evaluates (JSON), the same for runs that differ only in seeds
    training_seed: Any        # the adapter's training seed, None when unknown or no adapter is used
    eval_seed: Any
    label: str                # a short name for the subject, e.g. grpo_qwen/adapter

    @property
    def seeds(self) -> tuple[Any, Any]:
        return self.training_seed, self.eval_seed

    def seed_label(self) -> str:
        parts = ([f"train seed {self.training_seed}"] if self.training_seed is not None else []) + \
            [f"eval seed {self.eval_seed}"]
        return ", ".join(parts)


@dataclass(frozen=True)
class Group:
    name: str
    runs: tuple[EvalRun, ...]
    seeds: tuple[str, ...]     # one label per run: what makes it a replicate
    explicit: bool = False

    @property
    def methods(self) -> list[str]:
        """The methods every run of the group has, in the first run's order."""
        return [m for m in self.runs[0].methods if all(m in run.methods for run in self.runs[1:])]


def _drop(config: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def training_config(adapter: str | Path) -> dict[str, Any] | None:
    """The config of the training run that wrote `adapter` (its folder's parent's .hydra/config.yaml), or None."""
    path = Path(adapter).expanduser().parent / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def identity(run: EvalRun) -> Identity:
    ev = run.config.get("eval", {})
    subject: dict[str, Any] = {"policy": run.config.get("policy"), "user_prompt": ev.get("user_prompt")}
    training_seed, label = None, run.name
    if any(ADAPTER_SOURCE in method for method in run.methods) and ev.get("adapter"):
        adapter = Path(ev["adapter"])
        training = training_config(adapter)
        if training is None:
            subject["adapter"] = str(adapter)
            log.info("%s: no training config next to its adapter %s (%s): the adapter is known by its path", run.name,
                     adapter, adapter.parent / ".hydra" / "config.yaml")
        else:
            training_seed = training.get("seed")
            subject["adapter"] = {"training": _drop(training, SEED_KEYS + TRAINING_RUN_ONLY_KEYS),
                                  "folder": adapter.name}
            label = f"{training.get('experiment_name', adapter.parent.name)}/{adapter.name}"
    return Identity(json.dumps(subject, sort_keys=True, default=str), training_seed, run.config.get("seed"), label)


def _group_name(runs: list[EvalRun], first: Identity) -> str:
    """A run's own name; for replicates the adapter's training run (`grpo_qwen/adapter`), else what their names share."""
    if len(runs) == 1:
        return runs[0].name
    if first.label != runs[0].name:
        return first.label
    shared = os.path.commonprefix([run.name for run in runs]).rstrip("-_./ ")
    return shared if len(shared) >= 3 else f"{runs[0].name} (+{len(runs) - 1})"


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}#{k}", k + 1
    taken.add(candidate)
    return candidate


def group_runs(runs: list[EvalRun], explicit: dict[str, list[EvalRun]], seed_groups: bool = True) -> list[Group]:
    """The groups, in the order of their first run in `runs` (which holds every run, explicit groups' too)."""
    in_explicit = {id(run) for members in explicit.values() for run in members}
    identities = {id(run): identity(run) for run in runs}
    by_subject: dict[str, list[EvalRun]] = {}
    for run in runs:
        if id(run) not in in_explicit:
            key = identities[id(run)].subject if seed_groups else str(run.path.resolve())
            by_subject.setdefault(key, []).append(run)
    taken = set(explicit)
    groups: list[Group] = []
    for name, members in explicit.items():
        labels = [identities[id(r)].seed_label() for r in members]
        seeds = labels if len(set(labels)) == len(labels) else [r.name for r in members]
        groups.append(Group(name, tuple(members), tuple(seeds), explicit=True))
    for members in by_subject.values():
        seeds = [identities[id(r)].seeds for r in members]
        if len(members) > 1 and len(set(seeds)) < len(seeds):
            log.warning("%s evaluate the same thing with the same seeds: repeats, not seed replicates; each is compared "
                        "on its own (--group name=run,run,... groups them anyway)", ", ".join(r.name for r in members))
            singles = [[run] for run in members]
        else:
            singles = [members]
        for chunk in singles:
            groups.append(Group(_unique(_group_name(chunk, identities[id(chunk[0])]), taken), tuple(chunk),
                                tuple(identities[id(r)].seed_label() for r in chunk)))
    order = {id(run): k for k, run in enumerate(runs)}
    return sorted(groups, key=lambda g: min(order[id(r)] for r in g.runs))
