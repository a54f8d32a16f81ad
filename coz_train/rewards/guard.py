"""Rewards and updates that fail loudly: bounded retries, then stop or skip the update, by config.

`reward_failure.retries` / `backoff_s`: a reward call that raises (critic out of memory, server
down) or returns a non-finite score is retried with exponential backoff, all within one total
`reward_failure.deadline_s` per call (the retries of a critic client inside it included: a call
still running at the deadline is abandoned and counts as a failure). When it still fails:
- `reward_failure.on_failure=stop` (default): the run stops with `RewardFailedError` naming the
  reward, the attempts and the last error. Checkpoints already written stay valid (resume=auto).
- `skip`: that reward gives no score for the batch (None), the failure is counted in the logs
  (`reward_failures/<name>`), and the optimizer update of that step is dropped on every rank.
A non-finite score is never passed to TRL, which would quietly treat it as a missing value.

`UpdateGuardCallback` runs before each optimizer step: non-finite gradients (from a NaN loss, say)
stop the run with `NonFiniteGradientsError` or drop the update (`skip`), and a pending skip from a
failed reward drops it. Ranks agree through an all-reduce, so they never diverge. Dropping sets the
gradients to None, which torch optimizers treat as "no update" (under DeepSpeed the engine owns
the gradients: there the check is left to DeepSpeed's own overflow handling).
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback

log = logging.getLogger(__name__)


class RewardFailedError(RuntimeError):
    pass


class NonFiniteGradientsError(FloatingPointError):
    pass


class UpdateGuard:
    """Shared between the reward wrappers and the callback: is the next update to be dropped?"""

    def __init__(self, on_failure: str):
        if on_failure not in ("stop", "skip"):
            raise ValueError(f"reward_failure.on_failure='{on_failure}' must be 'stop' or 'skip'.")
        self.on_failure = on_failure
        self.skip_pending: str | None = None
        self.skipped_steps: list[int] = []


class RewardDeadlineError(TimeoutError):
    pass


_ABANDONED: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("reward_call_abandoned",
                                                                                     default=None)


def abandoned() -> threading.Event | None:
    """Inside a reward call made by `call_within`: the event set once the caller has given up on it (a client
    retrying on that thread stops then); None elsewhere."""
    return _ABANDONED.get()


def call_within(func: Callable[[], list], seconds: float) -> list:
    """func() on a daemon thread, its result if it finishes within `seconds`, else RewardDeadlineError. The thread
    is abandoned then (a hung request cannot be interrupted, but the run no longer waits for it) and told so through
    `abandoned()`, so that it makes no further attempts."""
    outcome: dict[str, Any] = {}
    done, given_up = threading.Event(), threading.Event()
    grad = torch.is_grad_enabled()

    def run() -> None:
        _ABANDONED.set(given_up)
        try:
            with torch.set_grad_enabled(grad):
                outcome["value"] = func()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            outcome["error"] = err
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="reward-call").start()
    if not done.wait(seconds):
        given_up.set()
        raise RewardDeadlineError(f"no answer within {seconds:.1f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class GuardedReward:
    def __init__(self, func: Callable[..., list], guard: UpdateGuard, retries: int, backoff_s: float,
                 deadline_s: float | None = None):
        self.func, self.guard, self.retries, self.backoff_s = func, guard, retries, backoff_s
        self.deadline_s = deadline_s if deadline_s else None
        self.__name__ = getattr(func, "__name__", type(func).__name__)

    def __call__(self, prompts: list | None = None, completions: list | None = None, **kwargs: Any) -> list:
        last: BaseException | None = None
        start, attempts = time.monotonic(), 0
        end = start + self.deadline_s if self.deadline_s else math.inf
        for attempt in range(self.retries + 1):
            attempts += 1
            try:
                def once() -> list:
                    return self.func(prompts=prompts, completions=completions, **kwargs)

                values = once() if self.deadline_s is None else call_within(once, end - time.monotonic())
                bad = sum(1 for v in values if v is not None and not math.isfinite(v))
                if bad:
                    raise RewardFailedError(f"{bad} non-finite score(s) of {len(values)}")
                return values
            except Exception as err:  # noqa: BLE001 - any failure of a reward is retried, then reported
                last = err
                delay = self.backoff_s * 2**attempt
                if attempt == self.retries or time.monotonic() + delay >= end:
                    break
                log.warning("Reward %s failed (%s: %s); retry %d/%d in %.1f s", self.__name__,
                            type(err).__name__, err, attempt + 1, self.retries, delay)
                time.sleep(delay)
        within = f" within reward_failure.deadline_s={self.deadline_s:g}" if self.deadline_s else ""
        message = (f"reward '{self.__name__}' failed after {attempts} attempt{'s' if attempts > 1 else ''} in {time.monotonic() - start:.1f} s"
                   f"{within}: {type(last).__name__}: {last}")
        if self.guard.on_failure == "stop":
            raise RewardFailedError(message + " (reward_failure.on_failure=skip drops such steps instead)") from last
        log.error("%s; its score is missing and this step's update is dropped", message)
        self.guard.skip_pending = message
        if kwargs.get("log_metric") is not None:
            kwargs["log_metric"](f"reward_failures/{self.__name__}", 1.0)
        return [None] * len(completions or [])


def guard_rewards(funcs: list[Callable], guard: UpdateGuard, retries: int, backoff_s: float,
                  deadline_s: float | None = None) -> list[GuardedReward]:
    return [GuardedReward(f, guard, retries, backoff_s, deadline_s) for f in funcs]


class UpdateGuardCallback(TrainerCallback):
    def __init__(self, guard: UpdateGuard):
        self.guard = guard

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = [p for p in model.parameters() if p.requires_grad and p.grad is not None] if model is not None else []
        # one device sync for all gradients, not one per parameter
        finite = bool(torch.stack([torch.isfinite(p.grad).all() for p in params]).all()) if params else True
        flags = torch.tensor([0 if finite else 1, 1 if self.guard.skip_pending else 0], device=args.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        nonfinite, skip = bool(flags[0]), bool(flags[1])
        step = state.global_step + 1
        if nonfinite and self.guard.on_failure == "stop":
            raise NonFiniteGradientsError(
                f"Non-finite gradients at step {step} (a NaN/inf loss or reward); "
                "reward_failure.on_failure=skip drops such updates instead."
            )
        if nonfinite or skip:
            reason = "non-finite gradients" if nonfinite else (self.guard.skip_pending or "a failed reward on another rank")
            log.warning("Step %d: optimizer update dropped (%s)", step, reason)
            for p in model.parameters():
                p.grad = None
            self.guard.skipped_steps.append(step)
        self.guard.skip_pending = None
        return control
