"""The installed TRL keeps the rollouts where `coz_train.rollout_log` reads them, and a trainer without them is refused."""

from __future__ import annotations

import pytest

from coz_train.rollout_log import rollout_log
from coz_train.train import build_trainer


def test_the_installed_trl_keeps_the_last_rollouts_in_its_completion_log(make_config):
    cfg = make_config("+experiment=smoke", "grpo.max_steps=1", "logging.wandb=false")
    trainer, _ = build_trainer(cfg)
    logs = rollout_log(trainer, "logging.sample_every", "0", ("completion", "rewards", "images"))
    trainer.train()
    batch = cfg.grpo.per_device_train_batch_size * cfg.grpo.gradient_accumulation_steps
    assert len(logs["completion"]) == batch  # the step's rollouts, read through the object taken at build time
    assert set(logs["rewards"]) >= {"critic", "phrase_exclusion", "repetition"}


def test_a_trainer_without_the_log_is_refused_naming_the_setting():
    with pytest.raises(RuntimeError, match=r"\['completion'\] missing\): set tripwires.max_empty_or_non_latin=null"):
        rollout_log(object(), "tripwires.max_empty_or_non_latin", "null")
