"""The train phase: LoRA forward + backward of a GRPO surrogate loss over every completion.

The plain path runs every row's full sequence; the fast path runs each group's prompt once
(`perf.group_prefix`) with the vision cache holding the step's images. No optimizer step is timed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from coz_train.bench.phases.checks import GRAD_TOL, LOGITS_TOL, control_off, float32, rel_err
from coz_train.bench.phases.policy import PolicyBench
from coz_train.bench.workload import rows

TRAIN_CHECK_ROWS = 4  # rows of group 0 in the float32 forward + backward check (they share one prompt)


def train_phase(bench: PolicyBench) -> dict:
    """LoRA forward + backward of a GRPO surrogate loss, one group per micro-batch; the fast path with the
    vision cache holding the step's images."""
    G = bench.shape.groups
    advantages = torch.randn(bench.n, generator=torch.Generator().manual_seed(1)).to(bench.dev.device)
    lora = [p for p in bench.policy.parameters() if p.requires_grad]

    def step(logps: Callable[[dict], torch.Tensor]) -> None:
        for p in lora:
            p.grad = None
        for g in range(G):
            adv = advantages[g * bench.shape.generations:(g + 1) * bench.shape.generations]
            loss = -(logps(bench.group(g)) * adv[:, None]).sum() / (bench.n * bench.keep)
            loss.backward()

    bench.policy.train()
    try:
        plain = bench.run(lambda: step(bench.plain_logps))
        with bench.vision_cached() as cached:
            fast = bench.run(lambda: step(bench.fast_logps))
    finally:
        bench.policy.eval()
        for p in lora:
            p.grad = None
    rows_checked = min(TRAIN_CHECK_ROWS, bench.shape.generations)
    try:
        check = bench.checked(lambda: train_check(bench, advantages[:rows_checked], lora))
    finally:
        for p in lora:
            p.grad = None
    return dict(plain=bench.per_token(plain), fast=bench.per_token(fast),
                floor_s=bench.flops_floor(bench.lm_params, bench.distinct_tokens(), 4.0),
                check=check, work=dict(bench.token_work(), vision_encodings_in_fast=cached.get("misses")))


def train_check(bench: PolicyBench, adv: torch.Tensor, lora: list) -> dict:
    """fp32: log-probs and LoRA gradients of the first rows of group 0 (they share the prompt, so the fast
    path still shares it), fast vs plain, and two controls that must be off."""
    inputs = rows(bench.batch, 0, len(adv))

    def grads(logps: Callable[[dict], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        for p in lora:
            p.grad = None
        out = logps(inputs)
        (-(out * adv[:, None]).sum()).backward()
        return out.detach(), torch.cat([p.grad.flatten() for p in lora])

    with float32(bench.policy, bench.dev):
        lp, g = grads(bench.plain_logps)
        lp_fast, g_fast = grads(bench.fast_logps)
        lp_pos, _ = grads(lambda b: bench.fast_logps(b, position_offset=1))
        _, g_detached = grads(lambda b: bench.fast_logps(b, detach_cache=True))
    result = dict(logp_rel_err=rel_err(lp_fast, lp), grad_rel_err=rel_err(g_fast, g),
                  control_position_plus_one_logp_rel_err=rel_err(lp_pos, lp),
                  control_detached_cache_grad_rel_err=rel_err(g_detached, g), rows=len(adv))
    result["passed"] = (result["logp_rel_err"] < LOGITS_TOL and result["grad_rel_err"] < GRAD_TOL
                        and control_off(result["control_position_plus_one_logp_rel_err"], result["logp_rel_err"])
                        and control_off(result["control_detached_cache_grad_rel_err"], result["grad_rel_err"]))
    return result
