"""Checkpoints that resume can trust.

The trainer writes `checkpoint-N/` file by file, so a crash or SIGKILL in the middle of a save
leaves a folder that looks like a checkpoint. After every rank has finished a save, rank zero
writes `checkpoint-N/COMPLETE` (atomically: a temp file renamed); `resume=auto` only considers
folders with that marker and moves incomplete ones aside, so they are neither resumed from nor
mixed with the save that later reuses their name.

Each adapter folder carries the run's model card (`coz_train.model_card`): checkpoints get theirs on save, the final
`adapter/` the run folder's card for the last step when it is published.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import torch.distributed as dist
from transformers import TrainerCallback

from coz_train.model_card import CARD, adapter_card, is_coz_card, write_card

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


def checkpoint_step(folder: str | Path) -> int:
    """The optimizer step a checkpoint holds (its trainer_state.json), or -1 when it has none."""
    state = Path(folder) / "trainer_state.json"
    if not state.is_file():
        return -1
    return int(json.loads(state.read_text()).get("global_step", -1))


def publish_adapter(saved: Path, adapter_dir: Path) -> None:
    """Move a fully written adapter folder into place as `adapter_dir` (rank zero): a run killed while the
    final adapter is written leaves no half-written `adapter/`. Unless it has the project's card already, the adapter
    gets the card the run folder has for the end of training (written by `ModelCardCallback`), replacing PEFT's."""
    run_card = adapter_dir.parent / CARD
    if not is_coz_card(saved / CARD) and is_coz_card(run_card):
        write_card(saved, adapter_card(run_card.read_text()))
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    os.replace(saved, adapter_dir)


def finish_from_checkpoint(checkpoint: Path, run_dir: Path) -> Path:
    """A run whose newest complete checkpoint is already at max_steps: nothing to train. The final adapter is
    that checkpoint's adapter; it is written only if `adapter/` is missing, so a finished run is left as it was."""
    adapter_dir = run_dir / "adapter"
    if (adapter_dir / "adapter_model.safetensors").is_file():
        log.info("This run is finished (%s is at max_steps and %s exists): nothing to train or write.",
                 checkpoint.name, adapter_dir)
        return adapter_dir
    if _is_rank_zero():
        partial = run_dir / "adapter.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for name in ("adapter_config.json", "adapter_model.safetensors", CARD):
            if name == CARD and not is_coz_card(checkpoint / name):
                continue
            shutil.copy2(checkpoint / name, partial / name)
        publish_adapter(partial, adapter_dir)
    log.info("Training had finished at %s (max_steps) before the final adapter was written: %s written from it.",
             checkpoint.name, adapter_dir)
    return adapter_dir
