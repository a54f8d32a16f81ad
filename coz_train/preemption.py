"""Surviving preemption: save at the end of the current optimizer step on a signal, then exit.

SLURM sends SIGTERM before a time limit or on preemption, or SIGUSR1 when asked to
(`#SBATCH --signal=B:USR1@120`, forwarded by `slurm/train.sbatch`). The handler only records
the signal; at the end of the optimizer step every rank agrees (an all-reduce of the flag, so
ranks that got the signal a moment apart stop at the same step), the trainer writes a
checkpoint, and the process exits with `PREEMPTED_EXIT_CODE` so the batch script requeues the
job. On restart `resume=auto` picks the newest complete checkpoint (see `checkpoints`).
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 124
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionCallback(TrainerCallback):
    """Installs the signal handlers for the duration of `trainer.train()`."""

    def __init__(self, signals: tuple[int, ...] = PREEMPTION_SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}

    def _record(self, signum: int, frame: Any) -> None:
        self.received = signum  # only a flag: the step in flight finishes normally

    def on_train_begin(self, args, state, control, **kwargs):
        self.received, self.stopped_at = None, None
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._record)

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _any_rank_signalled(self, device: torch.device) -> bool:
        flag = torch.tensor([1 if self.received is not None else 0], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_rank_signalled(args.device):
            name = signal.Signals(self.received).name if self.received is not None else "a signal (other rank)"
            log.warning("Received %s: saving a checkpoint at step %d and stopping", name, state.global_step)
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    @property
    def preempted(self) -> bool:
        return self.stopped_at is not None
