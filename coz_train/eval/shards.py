"""Which of the eval images this process evaluates (the device: `coz_train.devices.rank_device`).

Two levels, both deterministic splits by position in the sorted image list (`images.py`):
- the task: `eval.shard` of `eval.num_shards` (a SLURM array task; `slurm/eval.sbatch` sets both
  from SLURM_ARRAY_TASK_ID and the array's size) takes images[shard::num_shards];
- the rank: under `accelerate launch` (or torchrun) rank r of WORLD_SIZE takes every WORLD_SIZE-th
  image of its task's share, starting at r.
Every image belongs to exactly one process, whatever the split, and its result does not depend on
which process made it (`run.sample_seed`), so any split gives the same tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

from omegaconf import DictConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    task: int  # eval.shard
    tasks: int  # eval.num_shards
    rank: int  # this process in its launch
    world: int  # processes of the launch

    def of_task(self, items: list[T]) -> list[T]:
        """The items of this task (every rank of this launch together)."""
        return items[self.task :: self.tasks]

    def of_process(self, items: list[T]) -> list[T]:
        """This process's items."""
        return self.of_task(items)[self.rank :: self.world]

    def describe(self) -> str:
        parts = [f"shard {self.task} of {self.tasks}"] if self.tasks > 1 else []
        parts += [f"rank {self.rank} of {self.world}"] if self.world > 1 else []
        return ", ".join(parts) or "one process"


def current_shard(ev: DictConfig) -> Shard:
    """This process's place: eval.shard / eval.num_shards, and RANK / WORLD_SIZE of a distributed launch."""
    return Shard(ev.shard, ev.num_shards, int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))

