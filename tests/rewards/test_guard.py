import math
import threading
import time

import pytest
import torch
from transformers import TrainerControl, TrainerState

from coz_train.rewards import register
from coz_train.rewards.guard import (
    GuardedReward,
    NonFiniteGradientsError,
    RewardFailedError,
    UpdateGuard,
    UpdateGuardCallback,
)
from coz_train.train import build_trainer


class Flaky:
    __name__ = "flaky"

    def __init__(self, failures, value=0.5):
        self.failures, self.value, self.calls = failures, value, 0

    def __call__(self, prompts=None, completions=None, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("critic server down")
        return [self.value] * len(completions)


def test_retries_then_succeeds():
    func = Flaky(failures=2)
    out = GuardedReward(func, UpdateGuard("stop"), retries=2, backoff_s=0)(completions=["a", "b"])
    assert out == [0.5, 0.5] and func.calls == 3


def test_stop_raises_with_the_reward_and_the_cause():
    with pytest.raises(RewardFailedError, match=r"'flaky' failed after 2 attempts in [\d.]+ s: ConnectionError: critic server down"):
        GuardedReward(Flaky(failures=9), UpdateGuard("stop"), retries=1, backoff_s=0)(completions=["a"])


def test_non_finite_scores_are_failures_never_passed_on():
    guard = UpdateGuard("skip")
    logged = {}
    out = GuardedReward(Flaky(failures=0, value=math.nan), guard, retries=1, backoff_s=0)(
        completions=["a", "b"], log_metric=lambda k, v: logged.__setitem__(k, v))
    assert out == [None, None] and "non-finite" in guard.skip_pending and logged == {"reward_failures/flaky": 1.0}
    with pytest.raises(RewardFailedError, match="non-finite"):
        GuardedReward(Flaky(failures=0, value=math.inf), UpdateGuard("stop"), retries=0, backoff_s=0)(completions=["a"])


class Args:
    device = torch.device("cpu")


def with_grads(value):
    model = torch.nn.Linear(2, 2)
    for p in model.parameters():
        p.grad = torch.full_like(p, value)
    return model


def test_update_guard_drops_or_stops():
    guard = UpdateGuard("stop")
    callback = UpdateGuardCallback(guard)
    state, control = TrainerState(), TrainerControl()
    model = with_grads(1.0)
    callback.on_pre_optimizer_step(Args(), state, control, model=model)
    assert all(p.grad is not None for p in model.parameters())  # healthy: untouched
    with pytest.raises(NonFiniteGradientsError, match="step 1"):
        callback.on_pre_optimizer_step(Args(), state, control, model=with_grads(math.nan))

    guard = UpdateGuard("skip")
    callback = UpdateGuardCallback(guard)
    model = with_grads(math.inf)
    callback.on_pre_optimizer_step(Args(), state, control, model=model)
    assert all(p.grad is None for p in model.parameters()) and guard.skipped_steps == [1]
    guard.skip_pending = "critic failed"
    model = with_grads(1.0)
    callback.on_pre_optimizer_step(Args(), state, control, model=model)
    assert all(p.grad is None for p in model.parameters()) and guard.skip_pending is None


def always_down(prompts=None, completions=None, **kwargs):
    raise ConnectionError("critic server down")


@register("always_down")
def _build(params, cfg):
    return always_down


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_failing_reward_in_training(make_config, policy):
    cfg = make_config("+experiment=smoke", "rewards.critic.weight=0", "+rewards.always_down.weight=1.0",
                      "grpo.max_steps=2", "grpo.save_steps=1000", "logging.wandb=false",
                      f"reward_failure.on_failure={policy}", "reward_failure.retries=1", "reward_failure.backoff_s=0")
    trainer, _ = build_trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    if policy == "stop":
        with pytest.raises(RewardFailedError, match="always_down"):
            trainer.train()
        return
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)  # every update dropped
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2 and all(h["reward_failures/always_down"] == 1.0 for h in logs)


def test_one_deadline_bounds_a_hung_reward_and_its_retries():
    finished = threading.Event()

    def hung(prompts=None, completions=None, **kwargs):
        time.sleep(30)  # a critic server that never answers
        finished.set()
        return [1.0] * len(completions)

    reward = GuardedReward(hung, UpdateGuard("stop"), retries=3, backoff_s=0.01, deadline_s=0.5)
    with pytest.raises(RewardFailedError, match=r"'hung' failed after 1 attempt in [\d.]+ s within "
                                                 r"reward_failure.deadline_s=0.5: RewardDeadlineError"):
        reward(prompts=["p"], completions=["c"])
    assert not finished.is_set()  # the run reacted while the call was still hanging

    calls = []

    def flaky(prompts=None, completions=None, **kwargs):
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset")
        return [0.5] * len(completions)

    guarded = GuardedReward(flaky, UpdateGuard("stop"), retries=3, backoff_s=0.01, deadline_s=60)
    assert guarded(prompts=["p"], completions=["c"]) == [0.5] and len(calls) == 3  # retries inside the deadline
