"""Checkpoints that resume can trust.

The trainer writes `checkpoint-N/` file by file, so a crash or SIGKILL in the middle of a save
leaves a folder that looks like a checkpoint. After every rank has finished a save, rank zero
writes `checkpoint-N/COMPLETE` (atomically: a temp file renamed); `resume=auto` only considers
folders with that marker and moves incomplete ones aside, so they are neither resumed from nor
mixed with the save that later reuses their name.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import torch.distributed as dist
from transformers import TrainerCallback

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _is_rank_zero() -> bool:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


class CompleteMarkerCallback(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank's shard of this checkpoint is on disk
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            tmp = folder / f".{COMPLETE_MARKER}.tmp"
            tmp.write_text(f"step {state.global_step}\n")
            os.replace(tmp, folder / COMPLETE_MARKER)
        return control


def checkpoints(run_dir: str | Path) -> list[tuple[int, Path, bool]]:
    """(step, folder, complete) for every checkpoint-N in run_dir, by step."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        match = _CHECKPOINT.match(p.name)
        if match and p.is_dir():
            found.append((int(match.group(1)), p, (p / COMPLETE_MARKER).is_file()))
    return sorted(found)


def latest_complete(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint; incomplete ones newer than it are moved aside (rank zero)."""
    found = checkpoints(run_dir)
    complete = [p for _, p, ok in found if ok]
    newest = complete[-1] if complete else None
    for step, folder, ok in found:
        if not ok and (newest is None or step > int(newest.name.split("-")[1])):
            log.warning("Ignoring incomplete checkpoint %s (a save was interrupted)", folder)
            if _is_rank_zero():
                folder.rename(folder.with_name(f"{folder.name}.incomplete-{int(time.time())}"))
    return newest
