"""The two places where the project changes a part of TRL that TRL offers no setting for.

Everything else the `perf` switches do goes through public seams (the model's `forward`, `get_image_features`
and `generate`, the processor's components, the training dataset): `coz_train.perf.model`. These two replace a
TRL object's attribute for as long as they are installed, each as one logged `Replacement` that `undo()` puts
back; `coz_train.perf.capabilities` checks, before any model loads, that the seam still looks as it does here,
and tests/perf/test_trl_seams.py fails when a TRL release changes it.

- `group_batches` (`perf.group_batches`): TRL's `_prepare_inputs` shuffles the rows of a generation batch with
  the module function `trl.trainer.grpo_trainer.shuffle_sequence_dict` before cutting it into micro-batches, which
  scatters each group's completions; GRPOConfig has no option for the order of rows within a generation batch.
  The function is replaced by `group_shuffle` (whole groups, the same random draw) in that module while the fast
  path is installed.
- `vllm_base_weights`: TRL's vLLM weight sync (`trainer.vllm_generation.sync_weights`) merges the LoRA into the
  live policy and unmerges it, which drifts bf16 base weights a little at every sync; the sync runs with the base
  weights kept bit for bit (`coz_train.perf.merge.kept_base_weights`). Installed by the trainer whenever it
  generates with vLLM outside ZeRO-3, whatever the `perf` switches.
"""

from __future__ import annotations

import logging
from typing import Any

from coz_train.perf.group_batches import group_shuffle
from coz_train.perf.merge import kept_base_weights
from coz_train.perf.replacement import Replacement

log = logging.getLogger(__name__)

SHUFFLE_OWNER = "trl.trainer.grpo_trainer"
SHUFFLE_NAME = "shuffle_sequence_dict"


def group_batches() -> Replacement:
    """TRL's row shuffle of a generation batch replaced by the whole-group shuffle (applied; undo() restores)."""
    import importlib

    module = importlib.import_module(SHUFFLE_OWNER)
    if not callable(getattr(module, SHUFFLE_NAME, None)):
        raise RuntimeError(f"perf.group_batches: {SHUFFLE_OWNER} has no {SHUFFLE_NAME} to replace in this TRL; "
                           "set perf.group_batches=false.")
    return Replacement(module, SHUFFLE_NAME, group_shuffle, "group_batches").apply()


def vllm_base_weights(trainer: Any) -> Replacement | None:
    """TRL's vLLM weight sync wrapped so that the policy's base weights come out of it bit for bit (applied)."""
    generation = getattr(trainer, "vllm_generation", None)
    sync = getattr(generation, "sync_weights", None)
    if sync is None:
        log.warning("TRL's vLLM generation has no sync_weights here: base weights are not guarded across syncs.")
        return None
    model = trainer.model

    def guarded_sync(*args: Any, **kwargs: Any) -> Any:
        with kept_base_weights(trainer.accelerator.unwrap_model(model)):
            return sync(*args, **kwargs)

    return Replacement(generation, "sync_weights", guarded_sync, "base weights kept bit for bit").apply()
