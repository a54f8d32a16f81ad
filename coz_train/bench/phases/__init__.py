"""The phases of one GRPO step, each run the plain way (as TRL + PEFT do) and with the perf switches.

Every phase returns {"plain": timing, "fast": timing, "floor_s": ..., "work": ..., "check": ...}: timings
as `timing.timed` takes them, the floor as `floors` counts it, the check as `checks` runs it. One module
per phase: `preprocess` (CPU processors), `critic` (the critic VLM's scoring), and the policy phases
`vision`, `rollout`, `logps` and `train`, each a function of the `policy.PolicyBench` they share.
"""

from __future__ import annotations

from collections.abc import Callable

from coz_train.bench.phases.checks import CONTROL_MIN, GRAD_TOL, LOGITS_TOL, greedy_compare, guarded_check
from coz_train.bench.phases.critic import CRITIC_SCORING, critic_phase
from coz_train.bench.phases.logps import logps_phase
from coz_train.bench.phases.policy import PolicyBench, install
from coz_train.bench.phases.preprocess import preprocess_phase
from coz_train.bench.phases.rollout import rollout_phase
from coz_train.bench.phases.timing import Device, free_memory, measure_device
from coz_train.bench.phases.train import TRAIN_CHECK_ROWS, train_phase
from coz_train.bench.phases.vision import vision_phase

# every phase a run may select (bench.phases), in the order of a GRPO step
PHASES = ("preprocess", "vision", "rollout", "critic", "logps", "train")
# the phases on the policy, by name; preprocess and critic build their own processors and model
POLICY_PHASES: dict[str, Callable[[PolicyBench], dict]] = {
    "vision": vision_phase, "rollout": rollout_phase, "logps": logps_phase, "train": train_phase,
}

__all__ = [
    "CONTROL_MIN", "CRITIC_SCORING", "GRAD_TOL", "LOGITS_TOL", "PHASES", "POLICY_PHASES", "TRAIN_CHECK_ROWS",
    "Device", "PolicyBench", "critic_phase", "free_memory", "greedy_compare", "guarded_check", "install",
    "measure_device", "preprocess_phase",
]
