"""The logps phase: the reference log-probs of every completion (adapters off, no gradients).

The plain path runs TRL's fused log-prob head on every row's full sequence; the fast path runs each group's
prompt once (`perf.group_prefix`) with the vision cache holding the step's images.
"""

from __future__ import annotations

import torch

from coz_train.bench.phases.checks import LOGITS_TOL, float32, rel_err
from coz_train.bench.phases.policy import PolicyBench


def logps_phase(bench: PolicyBench) -> dict:
    """Reference log-probs (adapters off, no gradients), one group per micro-batch; the fast path with the
    vision cache holding the step's images, as the trainer's does after the rollouts."""
    G = bench.shape.groups
    with torch.no_grad(), bench.policy.disable_adapter():
        plain = bench.run(lambda: [bench.plain_logps(bench.group(g)) for g in range(G)])
        with bench.vision_cached() as cached:
            fast = bench.run(lambda: [bench.fast_logps(bench.group(g)) for g in range(G)])
    return dict(plain=bench.per_token(plain), fast=bench.per_token(fast),
                floor_s=bench.flops_floor(bench.lm_params, bench.distinct_tokens()),
                check=bench.checked(lambda: logps_check(bench)),
                work=dict(bench.token_work(), vision_encodings_in_fast=cached.get("misses")))


def logps_check(bench: PolicyBench) -> dict:
    with torch.no_grad(), bench.policy.disable_adapter(), float32(bench.policy, bench.dev):
        a, b = bench.plain_logps(bench.group(0)), bench.fast_logps(bench.group(0))
    err = rel_err(b, a)
    return dict(logp_rel_err=err, rows=bench.shape.generations, passed=err < LOGITS_TOL)
