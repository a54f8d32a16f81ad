"""The StepTimer on a trainer: each step split at TRL's methods, times exclusive, everything put back."""

from __future__ import annotations

import pytest

from coz_train.bench.step_timer import PHASES, StepTimer, critic_models, summary
from coz_train.perf.replacement import Replacement
from coz_train.train import build_trainer


def test_the_timer_splits_each_step_and_takes_itself_off_again(make_config):
    trainer, _ = build_trainer(make_config("+experiment=smoke", "logging.wandb=false", "grpo.max_steps=2",
                                           "grpo.save_strategy=no"))
    policy = trainer.accelerator.unwrap_model(trainer.model)
    critic = critic_models(trainer)
    assert len(critic) == 1
    before = {name: Replacement.own_value(trainer, name)
              for name in ("training_step", "log", "_prepare_inputs", "_clip_grad_norm")}
    hooks = len(critic[0]._forward_hooks)
    timer = StepTimer().install(trainer)
    # the policy's generate on the model clock (merged-adapter rollouts merge inside it)
    assert timer in trainer.callback_handler.callbacks and "generate" in vars(policy)
    trainer.train()
    timer.remove()
    assert timer not in trainer.callback_handler.callbacks and "generate" not in vars(policy)
    assert {name: Replacement.own_value(trainer, name) for name in before} == before  # nothing of the timer left
    assert len(critic[0]._forward_hooks) == hooks and "generate" not in vars(critic[0])

    assert len(timer.steps) == 2
    for step in timer.steps:
        assert set(step["phases"]) == set(PHASES)
        assert step["s"] == pytest.approx(sum(step["phases"].values()))  # exclusive phases add up to the step
        assert step["phases"]["rollout"] >= step["rollout_model_s"] > 0
        assert step["phases"]["rewards"] >= step["critic_model_s"] > 0
        assert step["cpu_s"] == pytest.approx(step["s"] - step["model_s"]) and step["cpu_s"] > 0
        assert step["cpu_phases"]["data"] == step["phases"]["data"] and "train" not in step["cpu_phases"]
        assert step["work"]["rows"] == 8 and step["work"]["generations"] == 4
    assert summary(timer.steps, warmup=1)["steps"] == 1 and summary(timer.steps, warmup=1)["first_step_s"] > 0
    with pytest.raises(RuntimeError, match="installed already"):
        timer.install(trainer).install(trainer)
