"""What the policy phases share: the policy, the step's batch and device, and the plain and fast log-prob passes.

`install(policy)` gives the policy TRL's fused log-prob head, which both paths score through (the fast one with
the backbone's shared prompt on, `perf.group_prefix`); `PolicyBench` holds one benchmark run's policy, batch and shape, and the helpers the policy
phases (`vision`, `rollout`, `logps`, `train`) time and check with. Each phase is a function of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from coz_train.bench.phases.checks import guarded_check
from coz_train.bench.phases.floors import flops_floor, lm_params_of, params_of
from coz_train.bench.phases.timing import Device, timed
from coz_train.bench.workload import Shape, rows
from coz_train.perf.group_prefix import SharedPrompt
from coz_train.perf.prefix import unwrap
from coz_train.perf.rollout_prefix import install_rollout_prefix
from coz_train.perf.trl_seams import completion_scoring
from coz_train.perf.vision_cache import install_vision_cache, uninstall_vision_cache


def install(policy: Any) -> None:
    """TRL's fused log-prob head, as TRL's trainer installs it."""
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(policy.get_base_model(), temperature=1.0, outputs=("log_probs", "entropy"))


class PolicyBench:
    """The policy, batch and device of one benchmark run, shared by the policy phases."""

    def __init__(self, dev: Device, shape: Shape, processor: Any, batch: dict, policy: Any,
                 static_cache: bool = False, check: bool = True, compiled_decode: bool = False):
        self.dev, self.shape, self.processor, self.batch = dev, shape, processor, batch
        self.policy, self.static_cache, self.check = policy, static_cache, check
        self.compiled_decode = compiled_decode
        self.rollout_prefix = install_rollout_prefix(policy)
        self.rollout_prefix.enabled = False  # on inside the fast rollout only
        self.n = shape.groups * shape.generations
        self.keep = shape.new_tokens
        inner = unwrap(policy)
        self.inner = inner
        self.lm_params = lm_params_of(inner)
        self.vision_params = params_of(inner.model.visual)
        grid = batch["image_grid_thw"]
        self.unique_patches = int(grid.prod(-1).view(self.n, 2)[:: shape.generations].sum())
        self.prompt_len = batch["input_ids"].shape[1] - self.keep

    def run(self, fn: Callable[[], Any]) -> dict:
        return timed(self.dev, fn, self.shape.warmup, self.shape.reps)

    def checked(self, fn: Callable[[], dict]) -> dict | None:
        return guarded_check(self.check, self.dev, fn)

    def group(self, g: int) -> dict:
        G = self.shape.generations
        return rows(self.batch, g * G, (g + 1) * G)

    def prompt_inputs(self, start: int = 0, end: int | None = None) -> dict:
        inputs = rows(self.batch, start, self.n if end is None else end)
        cut = self.prompt_len
        return dict(inputs, input_ids=inputs["input_ids"][:, :cut], attention_mask=inputs["attention_mask"][:, :cut],
                    mm_token_type_ids=inputs["mm_token_type_ids"][:, :cut])

    def plain_logps(self, inputs: dict) -> torch.Tensor:
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        labels[:, : -self.keep] = -100
        return self.policy(**inputs, labels=labels, fused_lm_head=True).log_probs[:, -self.keep:]

    def fast_logps(self, inputs: dict, **control: Any) -> torch.Tensor:
        """TRL's call with `perf.group_prefix` as the trainer installs it: the backbone's shared prompt on
        (`control`: its negative-control knobs), TRL's fused forward scoring the completion positions only."""
        backbone = self.inner.model
        backbone.shared_prompt = SharedPrompt(**control)
        scoring = completion_scoring(self.inner, backbone.shared_prompt)
        try:
            return self.plain_logps(inputs)
        finally:
            backbone.shared_prompt = None
            if scoring is not None:
                scoring.undo()

    @contextlib.contextmanager
    def vision_cached(self) -> Iterator[dict]:
        """The frozen-vision feature cache on the policy, holding the step's images as the rollouts leave it
        in training (`perf.vision_cache`); removed afterwards, so the plain paths never see it. Yields a dict
        that gets the vision tower's image encodings made while the cache was on (`misses`)."""
        cache = install_vision_cache(self.policy, 4 * self.n)
        stats: dict = {}
        try:
            with torch.no_grad():
                cache(self.batch["pixel_values"], self.batch["image_grid_thw"])  # the rollouts' encodings
            filled = cache.misses
            yield stats
            stats["misses"] = cache.misses - filled
        finally:
            uninstall_vision_cache(self.policy)

    def flops_floor(self, params: int, tokens: int, passes: float = 2.0) -> float:
        return flops_floor(self.dev, params, tokens, passes)

    def vision_floor(self) -> float:
        return self.flops_floor(self.vision_params, self.unique_patches)

    def per_token(self, timing: dict) -> dict:
        """tokens/s counts the rows' full sequences (the plain path's work) for both paths."""
        return dict(timing, tok_per_s=int(self.batch["attention_mask"].sum()) / timing["s"])

    def distinct_tokens(self) -> int:
        """Tokens the fast path must run: each group's prompt once, every completion."""
        G = self.shape.generations
        prompts = int(self.batch["attention_mask"][::G, : self.prompt_len].sum())
        return prompts + int(self.batch["attention_mask"][:, self.prompt_len:].sum())

    def token_work(self) -> dict:
        return dict(rows=self.n, tokens_plain=int(self.batch["attention_mask"].sum()),
                    tokens_distinct=self.distinct_tokens())
