"""Tripwires: checks at every logging step that say within a few steps when a GRPO run collapses.

A public GRPO run on Chain-of-Zoom collapsed into near-empty non-English output (completion length 45 -> 3 tokens,
KL 0.003 -> 8.4) before anyone noticed. Each wire reads one metric of the step's log entry and trips once that
metric has been past its threshold for `tripwires.patience` consecutive logging steps (docs/tripwires.md):

| wire | metric (logged by) | trips when |
|---|---|---|
| mean_length | completions/mean_length (TRL) | < tripwires.min_mean_length |
| length_drop | completions/mean_length (TRL) | < its early level / tripwires.length_drop |
| empty_or_non_latin | completions/empty_or_non_latin (here) | > tripwires.max_empty_or_non_latin |
| kl | kl (TRL, logged when grpo.beta != 0) | > tripwires.max_kl |
| entropy | entropy (TRL) | < tripwires.min_entropy |
| zero_spread | frac_reward_zero_std (TRL) | > tripwires.max_zero_std_frac |

The early level is the mean of the run's first `tripwires.early_checks` logged mean lengths. The checks read the
trainer state's log history, which every checkpoint saves: patience and the early level carry over a resume.

`TripwireCallback` runs first among the project's callbacks. At a step's log it adds the share of empty or mostly
non-Latin completions of the step's rollouts (`coz_train.rewards.validity.empty_or_non_latin`, the validity
reward's own test) and `tripwire/<wire>` (1 tripped, 0 not) for every armed wire to the step's logs, so that the
run's log file, log_history.jsonl and the trainer state hold them, and sends them to wandb. A wire that trips
writes one WARNING naming the wire, the value, the threshold and the step (console and train.log) and a JSON
record to train.log. With `tripwires.action=stop` the callback asks the trainer for a checkpoint and the end of
training through its control flags (`should_save`, `should_training_stop`), so the checkpoint is an ordinary one
(official adapter layout, COMPLETE marker, resumable); `coz_train.train.train` then raises `TripwireStop` with
the wires, the checkpoint and how to resume or relax them.

The rollouts' completions come from TRL's completion log (`coz_train.rollout_log`: the last generation batch,
gathered from every rank), as `coz_train.callbacks.SampleLogger` reads them: TRL offers its reward functions the
completions but no callback; `read_completions_of` checks that it is there before training starts.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from coz_train.rewards.text import completion_text
from coz_train.rewards.validity import empty_or_non_latin
from coz_train.rollout_log import rollout_log

log = logging.getLogger(__name__)
record = logging.getLogger("coz_train.record")  # the run's log file only (conf/config.yaml)

INVALID_KEY = "completions/empty_or_non_latin"  # logged by this module
LENGTH_KEY = "completions/mean_length"  # logged by TRL
ACTIONS = ("warn", "stop")


class TripwireStop(RuntimeError):
    """A tripwire with `tripwires.action=stop` ended the run after saving a checkpoint."""


@dataclass(frozen=True)
class Wire:
    name: str
    key: str  # the logged metric it reads
    setting: str  # the config key of its threshold
    limit: float
    above: bool  # trips above the limit, else below it
    basis: str = ""  # how the limit follows from the setting, where it is not the setting itself

    def breached(self, value: float) -> bool:
        return value > self.limit if self.above else value < self.limit


@dataclass(frozen=True)
class Trip:
    wire: Wire
    value: float
    step: int
    patience: int

    def describe(self) -> str:
        w = self.wire
        return (
            f"{w.key} = {self.value:.4g} {'>' if w.above else '<'} {w.limit:.4g} ({w.basis or w.setting}) "
            f"for {self.patience} logging step{'s' if self.patience > 1 else ''}"
        )

    def as_record(self) -> dict[str, Any]:
        w = self.wire
        return {
            "tripwire": w.name,
            "step": self.step,
            "metric": w.key,
            "value": self.value,
            "threshold": w.limit,
            "direction": "above" if w.above else "below",
            "setting": w.setting,
            "patience": self.patience,
        }


def check_tripwires(section: Any) -> None:
    """Refuse settings that could never trip or make no sense, at start-up (the schema has checked the types)."""
    if section.action not in ACTIONS:
        raise ValueError(f"tripwires.action='{section.action}' must be 'warn' or 'stop'.")
    for key in ("patience", "early_checks"):
        if section[key] < 1:
            raise ValueError(f"tripwires.{key}={section[key]} must be at least 1 (logging steps).")
    if not 0.0 <= section.min_latin_share <= 1.0:
        raise ValueError(f"tripwires.min_latin_share={section.min_latin_share} must be in [0, 1].")
    if section.length_drop is not None and section.length_drop <= 1.0:
        raise ValueError(
            f"tripwires.length_drop={section.length_drop} must be above 1 (the factor by which the mean "
            "length falls below its early level); null disarms the wire."
        )
    for key in ("max_empty_or_non_latin", "max_zero_std_frac"):
        value = section[key]
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(
                f"tripwires.{key}={value} must be a share in [0, 1) (a share cannot exceed 1, so 1 "
                "never trips); null disarms the wire."
            )
    for key in ("min_mean_length", "max_kl", "min_entropy"):
        value = section[key]
        if value is not None and value <= 0:
            raise ValueError(f"tripwires.{key}={value} must be positive; null disarms the wire.")


def logged(history: Sequence[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of every log entry with a finite number under `key`, in order."""
    out = []
    for entry in history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append((int(entry.get("step", -1)), float(value)))
    return out


def armed_wires(section: Any, history: Sequence[dict[str, Any]]) -> list[Wire]:
    """The wires with a threshold set; `length_drop` once the run has logged its early mean lengths."""
    wires = []
    if section.min_mean_length is not None:
        wires.append(Wire("mean_length", LENGTH_KEY, "tripwires.min_mean_length", section.min_mean_length, False))
    if section.length_drop is not None:
        early = [v for _, v in logged(history, LENGTH_KEY)[: section.early_checks]]
        if len(early) == section.early_checks:
            level = sum(early) / len(early)
            basis = f"early level {level:.4g} / tripwires.length_drop={section.length_drop:g}"
            wires.append(
                Wire("length_drop", LENGTH_KEY, "tripwires.length_drop", level / section.length_drop, False, basis)
            )
    if section.max_empty_or_non_latin is not None:
        wires.append(
            Wire(
                "empty_or_non_latin",
                INVALID_KEY,
                "tripwires.max_empty_or_non_latin",
                section.max_empty_or_non_latin,
                True,
            )
        )
    if section.max_kl is not None:
        wires.append(Wire("kl", "kl", "tripwires.max_kl", section.max_kl, True))
    if section.min_entropy is not None:
        wires.append(Wire("entropy", "entropy", "tripwires.min_entropy", section.min_entropy, False))
    if section.max_zero_std_frac is not None:
        wires.append(
            Wire("zero_spread", "frac_reward_zero_std", "tripwires.max_zero_std_frac", section.max_zero_std_frac, True)
        )
    return wires


def check(section: Any, history: Sequence[dict[str, Any]]) -> tuple[dict[str, bool], list[Trip]]:
    """The wires of the newest log entry: {wire: tripped} for every armed wire whose metric that entry holds, and
    the trips among them (its metric past the threshold in each of the last `patience` entries that hold it)."""
    if not history:
        return {}, []
    step = int(history[-1].get("step", -1))
    states, trips = {}, []
    for wire in armed_wires(section, history):
        if not logged(history[-1:], wire.key):
            continue  # not measured at this step (kl with grpo.beta=0, say)
        values = logged(history, wire.key)
        recent = values[-section.patience :]
        tripped = len(recent) == section.patience and all(wire.breached(v) for _, v in recent)
        states[wire.name] = tripped
        if tripped:
            trips.append(Trip(wire, values[-1][1], step, section.patience))
    return states, trips


def empty_or_non_latin_share(completions: Sequence[Any], min_latin_share: float) -> float | None:
    """The share of completions with no letter or with fewer than `min_latin_share` Latin letters; None for none."""
    if not completions:
        return None
    return sum(empty_or_non_latin(completion_text(c), min_latin_share) for c in completions) / len(completions)


class TripwireCallback(TrainerCallback):
    """Checks the wires at every log entry of training (module docstring); `stopped` lists the trips that ended it."""

    def __init__(self, section: Any, use_wandb: bool):
        self.section, self.use_wandb = section, use_wandb
        self.completions: Callable[[], list] | None = None
        self.tripped: set[str] = set()  # wires tripped at the latest check (a wire warns when it trips, not again)
        self.stopped: list[Trip] = []

    def read_completions_of(self, trainer: Any) -> None:
        """Where the rollouts' completions are read (TRL's completion log); refused at once if TRL moved it."""
        if not self.section.enabled or self.section.max_empty_or_non_latin is None:
            return
        logs = rollout_log(trainer, "tripwires.max_empty_or_non_latin", "null")
        self.completions = lambda: list(logs["completion"])

    def on_train_begin(self, args, state, control, **kwargs):
        self.tripped, self.stopped = set(), []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.section.enabled or not logs or "reward" not in logs or not state.log_history:
            return control  # the end-of-training summary and other entries hold no step metrics
        entry = state.log_history[-1]  # the trainer's copy of these logs (what checkpoints save)
        added: dict[str, float] = {}
        share = empty_or_non_latin_share(self.completions(), self.section.min_latin_share) if self.completions else None
        if share is not None:
            entry[INVALID_KEY] = added[INVALID_KEY] = share  # in the history before the check reads it
        states, trips = check(self.section, state.log_history)
        added.update({f"tripwire/{name}": float(on) for name, on in states.items()})
        entry.update(added)
        logs.update(added)  # the later callbacks write them to train.log and log_history.jsonl
        if state.is_world_process_zero:
            self._report(state.global_step, states, trips)
            if self.use_wandb:
                self._to_wandb(added, state.global_step)
        self.tripped = {name for name, on in states.items() if on} | (self.tripped - set(states))
        if trips and self.section.action == "stop":
            control.should_save = True
            control.should_training_stop = True
            self.stopped = trips
        return control

    def _report(self, step: int, states: dict[str, bool], trips: list[Trip]) -> None:
        for trip in trips:
            if trip.wire.name in self.tripped:
                continue
            then = "saving a checkpoint and stopping" if self.section.action == "stop" else "training goes on"
            log.warning(
                "Tripwire %s at step %d: %s; %s (tripwires.action=%s).",
                trip.wire.name,
                step,
                trip.describe(),
                then,
                self.section.action,
            )
            record.warning("tripwire %s", json.dumps(trip.as_record()))
        for name, on in states.items():
            if not on and name in self.tripped:
                log.info("Tripwire %s cleared at step %d.", name, step)

    @staticmethod
    def _to_wandb(values: dict[str, float], step: int) -> None:
        import wandb

        if wandb.run is not None and values:
            # the step axis of transformers' WandbCallback, which has logged this step's other metrics already
            wandb.log({**{f"train/{k}": v for k, v in values.items()}, "train/global_step": step})

    def stop_message(self, run_dir: str | Path) -> str:
        """What stopped the run, where its checkpoint is, and how to go on."""
        step = self.stopped[0].step
        wires = "; ".join(f"{t.wire.name}: {t.describe()}" for t in self.stopped)
        relax = ", ".join(f"{t.wire.setting}=<new threshold>" for t in self.stopped)
        return (
            f"Tripwire stop at step {step} (tripwires.action=stop): {wires}. Checkpoint {Path(run_dir) / f'checkpoint-{step}'} "
            f"is saved. To go on from it, run the same command with hydra.run.dir={run_dir} resume=auto and either "
            f"relax the wire ({relax}, or null to disarm it) or only warn (tripwires.action=warn). "
            "docs/tripwires.md explains each wire."
        )
