"""The three places where the project changes a part of TRL that TRL offers no setting for.

Everything else the `perf` switches do goes through public seams (the model's `forward`, `get_image_features`
and `generate`, the processor's components, the training dataset): `coz_train.perf.model`. These two replace a
TRL object's attribute for as long as they are installed, each as one logged `Replacement` that `undo()` puts
back; `coz_train.perf.capabilities` checks, before any model loads, that the seam still looks as it does here,
and the tests in tests/perf/ fail when a TRL release changes it.

- `group_batches` (`perf.group_batches`): TRL's `_prepare_inputs` shuffles the rows of a generation batch with
  the module function `trl.trainer.grpo_trainer.shuffle_sequence_dict` before cutting it into micro-batches, which
  scatters each group's completions; GRPOConfig has no option for the order of rows within a generation batch.
  The function is replaced by `group_shuffle` (whole groups, the same random draw) in that module while the fast
  path is installed.
- `completion_scoring` (with `perf.group_prefix`): the fused log-prob forward TRL sets on the policy (and the
  reference model) scores every position off CUDA/XPU; `CompletionScoring` hands it the labelled positions only,
  through its own `shift_labels` input, and the backbone returns just those positions' hidden states.
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


class CompletionScoring:
    """TRL's fused log-prob forward, asked to score the completion positions only (with `perf.group_prefix`).

    TRL's log-prob and training passes call `model(..., labels=labels, fused_lm_head=True)`; the forward TRL installs
    (`trl.trainer.utils.add_fused_lm_head`) runs the backbone and, off CUDA/XPU, scores every position of every row
    through the LM head (the prompt's too: about 700 of the paper's 730 positions), which on the CPU costs more than
    the shared prompt saves. This stands in for that forward while the fast path is installed: it turns `labels` into
    the pre-shifted `shift_labels` of the labelled positions (an input TRL's forward documents), has the backbone's
    `shared_prompt` return those positions' hidden states only (`span`), and lets TRL's own forward score them
    (temperature, fp32 head, entropy: all TRL's). The per-token outputs come back left-padded with zeros to the full
    length, as TRL's forward returns them; the loss is TRL's over the same positions.
    """

    def __init__(self, fused_forward: Any, shared_prompt: Any):
        self.fused_forward, self.shared_prompt = fused_forward, shared_prompt
        self.calls = 0
        # the forward's own signature, as TRL keeps it: `generate` checks its model keywords against it
        self.__wrapped__ = fused_forward

    def __call__(self, *args: Any, fused_lm_head: bool = False, labels: Any = None, shift_labels: Any = None,
                 **kwargs: Any) -> Any:
        import torch

        if not fused_lm_head or labels is None or shift_labels is not None or args or labels.ndim != 2:
            return self.fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                                      **kwargs)
        length = labels.shape[1]
        labelled = (labels[:, 1:] != -100).any(0).nonzero()
        if len(labelled) == 0:
            return self.fused_forward(fused_lm_head=True, labels=labels, **kwargs)
        first = int(labelled[0]) + 1  # the first labelled position; it is predicted from the one before it
        self.calls += 1
        self.shared_prompt.span = (first - 1, length - 1)
        try:
            out = self.fused_forward(fused_lm_head=True, shift_labels=labels[:, first:], **kwargs)
        finally:
            self.shared_prompt.span = None
        pad = first - 1  # TRL's own forward returns the `length - 1` shifted positions
        for name in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask"):
            value = getattr(out, name, None)
            if isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[1] == length - first:
                setattr(out, name, torch.nn.functional.pad(value, (pad, 0)))
        return out


def completion_scoring(model: Any, shared_prompt: Any) -> Replacement | None:
    """The model's fused log-prob forward (TRL's, an attribute of the model) wrapped by `CompletionScoring`
    (applied); None, with a log line, when the model has no forward of TRL's to wrap."""
    import inspect

    fused = model.__dict__.get("forward")
    if fused is None or "fused_lm_head" not in inspect.signature(fused, follow_wrapped=False).parameters:
        log.info("perf.group_prefix: %s has no fused log-prob forward of TRL's; every position is scored.",
                 type(model).__name__)
        return None
    return Replacement(model, "forward", CompletionScoring(fused, shared_prompt),
                       "group_prefix: completion positions scored").apply()
