"""Tripwires: the wires on hand-written log histories, the callback on the trainer's own state objects, and a tiny
GRPO run that collapses to empty completions, trips the length wire, stops with a checkpoint and resumes from it."""

import json
import logging

import pytest
from omegaconf import OmegaConf
from transformers import TrainerControl, TrainerState

from coz_train.checkpoints import COMPLETE_MARKER
from coz_train.config import TripwireConfig
from coz_train.rewards import register
from coz_train.tripwires import (
    INVALID_KEY,
    TripwireCallback,
    TripwireStop,
    check,
    check_tripwires,
    empty_or_non_latin_share,
)


def section(**changes):
    return OmegaConf.merge(OmegaConf.structured(TripwireConfig), changes)


def healthy(step, **changes):
    """A log entry of a healthy step (TRL's keys), with `changes`."""
    entry = {
        "step": step,
        "reward": 1.0,
        "completions/mean_length": 20.0,
        INVALID_KEY: 0.0,
        "kl": 0.01,
        "entropy": 1.5,
        "frac_reward_zero_std": 0.1,
    }
    return {**entry, **changes}


def test_the_defaults_in_config_yaml_are_the_schemas_and_pass_their_check(make_config):
    cfg = make_config()
    assert OmegaConf.to_container(cfg.tripwires) == OmegaConf.to_container(section())
    check_tripwires(cfg.tripwires)
    assert cfg.tripwires.action == "warn"


def test_a_wire_trips_after_patience_consecutive_breaches_only():
    wires = section(patience=3)
    history = [healthy(1), healthy(2, kl=0.9), healthy(3, kl=0.9)]
    states, trips = check(wires, history)
    assert states["kl"] is False and not trips  # two breaches of three
    history.append(healthy(4, kl=0.9))
    states, trips = check(wires, history)
    assert states["kl"] is True and [t.wire.name for t in trips] == ["kl"]
    assert trips[0].value == 0.9 and trips[0].step == 4 and trips[0].wire.limit == 0.5
    assert "kl = 0.9 > 0.5 (tripwires.max_kl) for 3 logging steps" in trips[0].describe()
    # one healthy step in between starts the count again
    history = [healthy(1, kl=0.9), healthy(2, kl=0.9), healthy(3), healthy(4, kl=0.9), healthy(5, kl=0.9)]
    assert check(wires, history)[1] == []


@pytest.mark.parametrize(
    "changes, wire",
    [
        ({"completions/mean_length": 3.0}, "mean_length"),
        ({INVALID_KEY: 0.75}, "empty_or_non_latin"),
        ({"kl": 8.4}, "kl"),
        ({"entropy": 0.001}, "entropy"),
        ({"frac_reward_zero_std": 1.0}, "zero_spread"),
    ],
)
def test_each_wire_trips_on_its_own_metric(changes, wire):
    history = [healthy(step, **changes) for step in range(1, 4)]
    states, trips = check(section(length_drop=None), history)
    assert [t.wire.name for t in trips] == [wire]
    assert states == {name: name == wire for name in states}
    assert set(states) == {"mean_length", "empty_or_non_latin", "kl", "entropy", "zero_spread"}


def test_length_drop_is_armed_by_the_early_level_and_trips_below_a_third_of_it():
    wires = section(patience=2, early_checks=3, length_drop=3.0)
    lengths = [45.0, 44.0, 46.0, 30.0, 14.0, 16.0, 14.9, 14.0]  # early level 45: the limit is 15
    history = [healthy(step, **{"completions/mean_length": v}) for step, v in enumerate(lengths, 1)]
    assert "length_drop" not in check(wires, history[:2])[0]  # the early level is not known yet
    tripped = [step for step in range(3, 9) if check(wires, history[:step])[0]["length_drop"]]
    assert tripped == [8]
    trip = check(wires, history)[1][0]
    assert trip.wire.name == "length_drop" and trip.wire.limit == pytest.approx(15.0)


def test_a_wire_whose_metric_is_not_logged_at_this_step_is_not_checked():
    # grpo.beta=0: TRL logs no kl; the end-of-training summary holds no step metric at all
    history = [{k: v for k, v in healthy(step, kl=None).items()} for step in range(1, 4)]
    assert "kl" not in check(section(), history)[0]
    assert check(section(), [*history, {"step": 3, "train_runtime": 1.0}]) == ({}, [])


def test_patience_counts_across_a_resume():
    # the trainer state's log history is saved with each checkpoint: steps before the resume count
    wires = section(patience=3)
    before = [healthy(1), healthy(2, entropy=0.0), healthy(3, entropy=0.0)]
    after_resume = json.loads(json.dumps(before)) + [healthy(4, entropy=0.0)]
    assert [t.wire.name for t in check(wires, after_resume)[1]] == ["entropy"]


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"action": "halt"}, "tripwires.action"),
        ({"patience": 0}, "tripwires.patience"),
        ({"early_checks": 0}, "tripwires.early_checks"),
        ({"length_drop": 1.0}, "tripwires.length_drop"),
        ({"max_empty_or_non_latin": 1.0}, "tripwires.max_empty_or_non_latin"),
        ({"max_zero_std_frac": -0.1}, "tripwires.max_zero_std_frac"),
        ({"min_latin_share": 2.0}, "tripwires.min_latin_share"),
        ({"max_kl": 0.0}, "tripwires.max_kl"),
        ({"min_mean_length": -1.0}, "tripwires.min_mean_length"),
        ({"min_entropy": 0.0}, "tripwires.min_entropy"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(changes, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        check_tripwires(section(**changes))


def test_null_disarms_a_wire():
    wires = section(
        min_mean_length=None,
        length_drop=None,
        max_empty_or_non_latin=None,
        max_kl=None,
        min_entropy=None,
        max_zero_std_frac=None,
    )
    check_tripwires(wires)
    history = [healthy(step, kl=9.0, entropy=0.0) for step in range(1, 5)]
    assert check(wires, history) == ({}, [])


def test_the_share_of_empty_or_non_latin_completions():
    completions = ["fur, whiskers", "", "  ", "毛皮, 胡须", "\ufffd\ufffd 3", "мех fur", "mostly latin, ab мы"]
    # empty, blank, Chinese, no letter at all; "мех fur" is 3 of 6 letters Latin: at 0.5 it passes
    assert empty_or_non_latin_share(completions, 0.5) == pytest.approx(4 / 7)
    assert empty_or_non_latin_share(completions, 0.6) == pytest.approx(5 / 7)
    conversational = [[{"role": "assistant", "content": "stone"}], [{"role": "assistant", "content": "石"}]]
    assert empty_or_non_latin_share(conversational, 0.5) == 0.5
    assert empty_or_non_latin_share([], 0.5) is None


class Completions:
    """Stands in for the trainer in `read_completions_of`: TRL's completion log of the last generation batch."""

    def __init__(self, completions):
        self._logs = {"completion": completions}


def log_step(callback, state, logs):
    state.global_step = logs["step"]
    state.log_history.append(dict(logs))
    control = TrainerControl()
    logs = {k: v for k, v in logs.items() if k != "step"}
    callback.on_log(None, state, control, logs=logs)
    return logs, control


@pytest.fixture
def records_too(monkeypatch):
    """caplog sees the run-log-file records (Hydra's logging config, when applied, keeps them off the root)."""
    monkeypatch.setattr(logging.getLogger("coz_train.record"), "propagate", True)


def test_the_callback_warns_once_records_and_logs_the_metrics(caplog, records_too):
    callback = TripwireCallback(section(patience=2), use_wandb=False)
    callback.read_completions_of(Completions(["", "", "fur, moss", "石头"]))  # 3 of 4 empty or non-Latin
    state = TrainerState()
    caplog.set_level(logging.INFO)
    logs, control = log_step(callback, state, healthy(1))
    assert logs[INVALID_KEY] == 0.75 and state.log_history[-1][INVALID_KEY] == 0.75
    assert logs["tripwire/empty_or_non_latin"] == 0.0 and logs["tripwire/kl"] == 0.0
    assert not caplog.records
    logs, control = log_step(callback, state, healthy(2))
    assert logs["tripwire/empty_or_non_latin"] == 1.0 and state.log_history[-1]["tripwire/empty_or_non_latin"] == 1.0
    assert not control.should_save and not control.should_training_stop  # action=warn
    warning = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "coz_train.tripwires"]
    assert len(warning) == 1
    assert "Tripwire empty_or_non_latin at step 2" in warning[0].getMessage()
    assert "0.75 > 0.5 (tripwires.max_empty_or_non_latin)" in warning[0].getMessage()
    records = [json.loads(r.getMessage().split(" ", 1)[1]) for r in caplog.records if r.name == "coz_train.record"]
    assert records == [
        {
            "tripwire": "empty_or_non_latin",
            "step": 2,
            "metric": INVALID_KEY,
            "value": 0.75,
            "threshold": 0.5,
            "direction": "above",
            "setting": "tripwires.max_empty_or_non_latin",
            "patience": 2,
        }
    ]
    caplog.clear()
    log_step(callback, state, healthy(3))  # still tripped: no second warning
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert callback.stopped == []


def test_with_action_stop_the_callback_asks_for_a_checkpoint_and_the_end(tmp_path):
    callback = TripwireCallback(section(patience=2, action="stop", max_empty_or_non_latin=None), use_wandb=False)
    state = TrainerState()
    _, control = log_step(callback, state, healthy(1, kl=2.0))
    assert not control.should_save and not control.should_training_stop
    _, control = log_step(callback, state, healthy(2, kl=2.0))
    assert control.should_save and control.should_training_stop
    message = callback.stop_message(tmp_path)
    assert "step 2" in message and "tripwires.max_kl" in message and "resume=auto" in message
    assert str(tmp_path / "checkpoint-2") in message and "tripwires.action=warn" in message


def test_the_metrics_reach_wandb_on_the_trainers_step_axis(tmp_path):
    import wandb

    callback = TripwireCallback(section(patience=1, max_empty_or_non_latin=None), use_wandb=True)
    state = TrainerState()
    run = wandb.init(mode="offline", dir=str(tmp_path), project="tripwires")
    try:
        log_step(callback, state, healthy(7, kl=3.0))
        summary = dict(run.summary)
    finally:
        wandb.finish()
    assert summary["train/tripwire/kl"] == 1.0 and summary["train/tripwire/entropy"] == 0.0
    assert summary["train/global_step"] == 7


def test_disabled_checks_nothing_and_reads_no_completions():
    callback = TripwireCallback(section(enabled=False), use_wandb=False)
    callback.read_completions_of(object())  # no completion log needed
    state = TrainerState()
    for step in range(1, 5):
        logs, control = log_step(callback, state, healthy(step, kl=9.0))
        assert logs == {k: v for k, v in healthy(step, kl=9.0).items() if k != "step"}  # nothing added
        assert not control.should_save and not control.should_training_stop


def test_a_trainer_without_the_completion_log_is_refused_at_once():
    with pytest.raises(RuntimeError, match="tripwires.max_empty_or_non_latin=null"):
        TripwireCallback(section(), use_wandb=False).read_completions_of(object())


# -- a real tiny GRPO run that collapses ------------------------------------------------------------------------


def shorter_is_better(prompts=None, completions=None, completion_ids=None, **kwargs):
    """Pays for empty completions: 1 for an immediate end of sequence, 0 for the full 48 tokens."""
    return [1.0 - len(ids) / 48 for ids in completion_ids]


@register("shorter_is_better")
def _build_shorter_is_better(params, cfg):
    return shorter_is_better


COLLAPSE = [
    "+experiment=smoke",
    "rewards.critic.weight=0",
    "rewards.phrase_exclusion.weight=0",
    "rewards.repetition.weight=0",
    "+rewards.shorter_is_better.weight=1.0",
    "grpo.max_completion_length=48",
    "grpo.learning_rate=3e-2",
    "grpo.beta=0",
    "grpo.max_steps=60",  # the collapse comes within ~10-30 steps; a group whose 8 completions all fill the 48
    # tokens has no reward spread and teaches nothing, and how many such steps come first depends on sampling
    "grpo.save_steps=1000",
    "logging.wandb=false",
    "logging.sample_every=0",
    "tripwires.patience=2",
    "tripwires.early_checks=3",
    "tripwires.max_zero_std_frac=null",  # those steps would trip the zero-spread wire first: this is the length wire's test
]


@pytest.mark.slow
def test_a_collapsing_run_trips_the_length_wire_stops_with_a_checkpoint_and_resumes(
    make_config, tmp_path, caplog, records_too
):
    from coz_train.train import train

    caplog.set_level(logging.INFO)
    run = tmp_path / "run"
    with pytest.raises(TripwireStop) as stop:
        train(make_config(*COLLAPSE, "tripwires.action=stop"))
    entries = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    steps = [e for e in entries if "reward" in e]
    lengths = [e["completions/mean_length"] for e in steps]
    stopped = steps[-1]["step"]
    assert stopped < 60, lengths  # the run stopped itself
    # the length wire tripped there, and by the rule: its last 2 mean lengths below a third of the first 3's mean
    early = sum(lengths[:3]) / 3
    assert steps[-1]["tripwire/length_drop"] == 1.0 and all(v < early / 3 for v in lengths[-2:]), lengths
    assert not any(e.get("tripwire/length_drop") for e in steps[:-1])  # and not before
    assert lengths[-1] < lengths[0] / 3
    assert f"Tripwire stop at step {stopped}" in str(stop.value) and "tripwires.length_drop" in str(stop.value)
    assert any(
        r.levelno == logging.WARNING and f"Tripwire length_drop at step {stopped}" in r.getMessage()
        for r in caplog.records
    )
    assert any(r.name == "coz_train.record" and '"tripwire": "length_drop"' in r.getMessage() for r in caplog.records)
    # an ordinary, complete checkpoint at that step and no final adapter
    checkpoint = run / f"checkpoint-{stopped}"
    assert (checkpoint / COMPLETE_MARKER).is_file() and (checkpoint / "adapter_model.safetensors").is_file()
    assert not (run / "adapter").exists()
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    assert saved["global_step"] == stopped and saved["log_history"][-1].get("tripwire/length_drop") == 1.0

    # resumed as the message says, warning only: it goes on from that step to max_steps
    adapter = train(make_config(*COLLAPSE, "tripwires.action=warn", "resume=auto"))
    assert (adapter / "adapter_model.safetensors").is_file()
    entries = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    resumed = [e["step"] for e in entries if "reward" in e][len(steps) :]
    assert resumed == list(range(stopped + 1, 61))
