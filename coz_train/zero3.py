"""Whether DeepSpeed ZeRO-3 shards the weights, asked in one place: before the trainer exists (the checks of a
run, from the launch environment) and once it does (from its accelerator's DeepSpeed plugin)."""

from __future__ import annotations

import os
from typing import Any

STAGE_ENV = "ACCELERATE_DEEPSPEED_ZERO_STAGE"  # set by `accelerate launch` from a DeepSpeed config


def launched_with_zero3() -> bool:
    """The run was started by `accelerate launch` with a ZeRO-3 config (recipes/accelerate_configs/zero3.yaml)."""
    return os.environ.get(STAGE_ENV) == "3"


def trainer_uses_zero3(trainer: Any) -> bool:
    """The trainer's accelerator shards its weights with ZeRO-3."""
    return bool(trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3)
