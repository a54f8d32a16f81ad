"""Whole GRPO steps of a trainer, timed and split at TRL's own phase boundaries: `StepTimer`.

`StepTimer(sync).install(trainer)` replaces these attributes of the trainer with timed wrappers of
themselves (each one logged; `remove()` puts the very objects back), and joins the trainer's callbacks, which
close one record per optimizer step:

    get_batch_samples                    -> data       the dataloader: dataset rows, image decoding, collation
    _prepare_inputs                      -> prepare    TRL's generation batch: chat templates, processor calls,
                                                       padding, advantages, shuffling and splitting
    _generate_single_turn                -> rollout    sampling the completions
    _calculate_rewards                   -> rewards    every reward function, the critic's included
    _get_per_token_logps_and_entropies   -> logps      the passes without gradients (reference, old policy)
    training_step                        -> train      the loss's forward and backward, per micro-batch
    _clip_grad_norm, (on_pre_optimizer_step .. on_optimizer_step)
                                         -> optimizer  gradient clipping and the optimizer step
    log                                  -> log        TRL's metrics, the run's log lines and files
    the rest of the step                 -> other      callbacks, the scheduler

Times are exclusive: a phase running inside another (the rollout inside prepare inside train) counts in the
inner one only. `sync` (CUDA-synchronise on a GPU) runs at every boundary, so a phase holds its own kernels.

The model clock holds the time inside the models: the policy's `generate` (wrapped on the policy; with
`perf.merge_adapters_for_generation` it merges and restores the weights inside, which is device work), the
critic's model calls (forward hooks on its modules), and the logps, train and optimizer phases whole. The
rest of the step, `cpu_s`, is the CPU-side work that does not wait on the device: loading and preprocessing,
batching, hashing, reward text handling, logging (`cpu_phases`: where it falls, the rollout and rewards
phases counted outside the models).

Each clock is kept twice: in wall time (`time.perf_counter`: `s`, `phases`, `cpu_s`, `cpu_phases`) and in the
process's CPU time (`time.process_time`: `cpu_time_s`, the CPU share `cpu_process_s` and `cpu_process_phases`),
which on a CPU is what the work itself costs, whatever else runs on the machine (a loaded machine stretches
the wall clock, not the CPU clock). Python's garbage collector runs inside whatever phase allocates when a
collection is due; its time is also recorded apart (`gc_s`, `gc_collections`, and `gc_full`: the full
collections, which walk every object the process holds).
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from coz_train.perf.prefix import unwrap
from coz_train.perf.replacement import Replacement

log = logging.getLogger(__name__)

PHASES = ("data", "prepare", "rollout", "rewards", "logps", "train", "optimizer", "log", "other")
MODEL_PHASES = ("logps", "train", "optimizer")  # inside the models whole
_TIMED = {"get_batch_samples": "data", "_prepare_inputs": "prepare", "_generate_single_turn": "rollout",
          "_calculate_rewards": "rewards", "_get_per_token_logps_and_entropies": "logps",
          "training_step": "train", "_clip_grad_norm": "optimizer", "log": "log"}


def critic_models(trainer: Any) -> list[torch.nn.Module]:
    """The in-process critic models among the trainer's reward functions (through their guards)."""
    found = []
    for func in trainer.reward_funcs:
        backend = getattr(getattr(func, "func", func), "backend", None)
        model = getattr(backend, "model", None)
        if isinstance(model, torch.nn.Module):
            found.append(model)
    return found


class StepTimer(TrainerCallback):
    """One record per optimizer step in `steps`: the step's seconds, each phase's, the model clock, the CPU share
    (see the module's docstring). `sync` runs at every boundary, `peak_memory` once per step."""

    def __init__(self, sync: Callable[[], None] = lambda: None, peak_memory: Callable[[], float | None] = lambda: None):
        self.sync, self.peak_memory = sync, peak_memory
        self.changes: list[Replacement] = []
        self.hooks: list[Any] = []
        self.trainer: Any = None
        self.steps: list[dict] = []
        self._stack: list[str] = []
        self._depth = 0
        self._gc_start = 0.0
        self._reset(time.perf_counter())

    # -- installing --------------------------------------------------------------------------------------------

    def install(self, trainer: Any) -> StepTimer:
        if self.trainer is not None:
            raise RuntimeError("this StepTimer is installed already")
        for name, phase in _TIMED.items():
            self._replace(trainer, name, self._timed(getattr(trainer, name), phase), f"step timer: {phase}")
        policy = trainer.accelerator.unwrap_model(trainer.model)
        self._replace(policy, "generate", self._model_call(policy.generate, "rollout"), "step timer: model clock")
        for model in critic_models(trainer):
            self._replace(model, "generate", self._model_call(model.generate, "critic"), "step timer: model clock")
            inner = unwrap(model)
            for module in {id(m): m for m in (model, inner, inner.model, inner.lm_head)}.values():
                self.hooks.append(module.register_forward_pre_hook(lambda *_: self._model_enter()))
                self.hooks.append(module.register_forward_hook(lambda *_: self._model_exit("critic"), always_call=True))
        trainer.add_callback(self)
        gc.callbacks.append(self._on_gc)
        self.trainer = trainer
        log.info("step timer installed: %s; forward hooks on %d critic modules",
                 ", ".join(f"{c.target} ({c.reason.removeprefix('step timer: ')})" for c in self.changes),
                 len(self.hooks) // 2)
        return self

    def remove(self) -> None:
        for change in reversed(self.changes):
            change.undo()
        for hook in self.hooks:
            hook.remove()
        if self.trainer is not None:
            self.trainer.remove_callback(self)
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self.changes, self.hooks, self.trainer = [], [], None

    def _replace(self, owner: Any, name: str, value: Any, reason: str) -> None:
        self.changes.append(Replacement(owner, name, value, reason).apply())

    # -- the phase clock ---------------------------------------------------------------------------------------

    def _reset(self, now: float) -> None:
        self.start = self.mark = now
        self.cpu_start = self.cpu_mark = time.process_time()
        self.phases = dict.fromkeys(PHASES, 0.0)
        self.cpu_time = dict.fromkeys(PHASES, 0.0)
        self.model = {"rollout": 0.0, "critic": 0.0}
        self.model_cpu = {"rollout": 0.0, "critic": 0.0}
        self.gc = {"s": 0.0, "collections": 0, "full": 0}
        self.work: dict[str, Any] = {}

    def _charge(self) -> float:
        self.sync()
        now, cpu = time.perf_counter(), time.process_time()
        if self._stack:
            self.phases[self._stack[-1]] += now - self.mark
            self.cpu_time[self._stack[-1]] += cpu - self.cpu_mark
        self.mark, self.cpu_mark = now, cpu
        return now

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
            return
        self.gc["s"] += time.perf_counter() - self._gc_start
        self.gc["collections"] += 1
        self.gc["full"] += int(info.get("generation") == 2)

    def enter(self, phase: str) -> None:
        self._charge()
        self._stack.append(phase)

    def exit(self) -> None:
        self._charge()
        self._stack.pop()

    def _timed(self, method: Callable, phase: str) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if phase == "logps" and torch.is_grad_enabled():  # the training pass's forward: part of train
                return method(*args, **kwargs)
            self.enter(phase)
            try:
                out = method(*args, **kwargs)
            finally:
                self.exit()
            if phase == "rollout":
                self._count_rollout(args, kwargs, out)
            return out

        timed.__qualname__ = f"StepTimer.timed[{phase}]"
        return timed

    def _count_rollout(self, args: tuple, kwargs: dict, out: Any) -> None:
        prompt_ids = kwargs.get("prompt_ids", args[0] if args else None)
        generations = kwargs.get("num_generations", args[3] if len(args) > 3 else None)
        completions = out[0]
        if prompt_ids is not None and generations:
            lengths = [len(p) for p in prompt_ids]
            self.work = dict(rows=len(lengths), generations=int(generations), prompt_tokens=max(lengths),
                             distinct_prompt_tokens=sum(lengths[::generations]),
                             completion_tokens=sum(len(c) for c in completions),
                             max_completion_tokens=max((len(c) for c in completions), default=0))

    # -- the model clock ---------------------------------------------------------------------------------------

    def _model_enter(self) -> None:
        if self._depth == 0:
            self.sync()
            self._model_start, self._model_cpu_start = time.perf_counter(), time.process_time()
        self._depth += 1

    def _model_exit(self, kind: str) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.sync()
            self.model[kind] += time.perf_counter() - self._model_start
            self.model_cpu[kind] += time.process_time() - self._model_cpu_start

    def _model_call(self, method: Callable, kind: str) -> Callable:
        def model_call(*args: Any, **kwargs: Any) -> Any:
            self._model_enter()
            try:
                return method(*args, **kwargs)
            finally:
                self._model_exit(kind)

        model_call.__qualname__ = f"StepTimer.model_call[{kind}]"
        return model_call

    # -- callbacks: the optimizer phase and the step records ---------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        self._stack.clear()
        self._reset(self._charge())

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.enter("optimizer")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.exit()

    def on_step_end(self, args, state, control, **kwargs):
        now = self._charge()
        total, total_cpu = now - self.start, self.cpu_mark - self.cpu_start
        model, cpu = outside_models(total, self.phases, self.model)
        model_cpu, cpu_process = outside_models(total_cpu, self.cpu_time, self.model_cpu)
        self.steps.append(dict(step=state.global_step, s=total, phases=dict(self.phases), model_s=model,
                               rollout_model_s=self.model["rollout"], critic_model_s=self.model["critic"],
                               cpu_s=total - model, cpu_phases=cpu, cpu_time_s=total_cpu,
                               cpu_process_s=total_cpu - model_cpu, cpu_process_phases=cpu_process,
                               gc_s=self.gc["s"], gc_collections=self.gc["collections"], gc_full=self.gc["full"],
                               peak_GB=self.peak_memory(), work=self.work))
        self._reset(now)


def outside_models(total: float, phases: dict[str, float], model: dict[str, float]) -> tuple[float, dict[str, float]]:
    """One clock's step: (its time in the models, each phase's time outside them); `phases` gets its "other"
    (the step's time outside every timed method)."""
    phases["other"] = max(0.0, total - sum(v for k, v in phases.items() if k != "other"))
    outside = {p: v for p, v in phases.items() if p not in MODEL_PHASES}
    outside["rollout"] -= model["rollout"]
    outside["rewards"] -= model["critic"]
    return sum(model.values()) + sum(phases[k] for k in MODEL_PHASES), outside


def summary(steps: list[dict], warmup: int) -> dict:
    """Medians over the steps after `warmup`: the step, each phase, the model clock and the CPU share (wall and
    CPU time); the garbage collector's mean time per step and its full collections, summed; the largest peak
    memory; the first step apart (it holds one-time work: compilation, caches filling)."""
    timed = steps[warmup:] or steps[-1:]

    def median(get: Callable[[dict], float]) -> float:
        return statistics.median(get(s) for s in timed)

    peaks = [s["peak_GB"] for s in timed if s["peak_GB"] is not None]
    return dict(
        s=median(lambda s: s["s"]), times=[round(s["s"], 4) for s in steps], steps=len(timed),
        phases={p: median(lambda s, p=p: s["phases"][p]) for p in PHASES},
        model_s=median(lambda s: s["model_s"]), cpu_s=median(lambda s: s["cpu_s"]),
        cpu_phases={p: median(lambda s, p=p: s["cpu_phases"][p]) for p in timed[0]["cpu_phases"]},
        rollout_model_s=median(lambda s: s["rollout_model_s"]), critic_model_s=median(lambda s: s["critic_model_s"]),
        cpu_process_s=median(lambda s: s["cpu_process_s"]),
        cpu_process_phases={p: median(lambda s, p=p: s["cpu_process_phases"][p]) for p in timed[0]["cpu_process_phases"]},
        gc_mean_s=statistics.fmean(s["gc_s"] for s in timed), gc_full=sum(s["gc_full"] for s in timed),
        peak_GB=max(peaks) if peaks else None, first_step_s=steps[0]["s"] if steps else None, work=timed[-1]["work"])
