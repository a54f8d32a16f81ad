"""TRL's GRPOTrainer with the `perf` fast path and adapters in the official Chain-of-Zoom layout.

The `perf.*` switches (docs/performance.md) are one `coz_train.perf.fast_path.FastPath`, installed with
`trainer.install_fast_path(FastPath(cfg.perf))` (it logs each attribute it replaces) and taken off with
`trainer.remove_fast_path()`; without one, or with every switch off, the trainer runs TRL's own path. The
TRL methods overridden here only ask the installed fast path whether a per-call switch is on.

Every adapter the trainer writes (`checkpoint-N/`, the final `adapter/`) is rewritten into the layout
the official Chain-of-Zoom inference loads, and resuming loads it back in full
(`coz_train.policy.adapters`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from trl import GRPOTrainer

from coz_train.perf.fast_path import FastPath
from coz_train.perf.group_prefix import KWARG
from coz_train.perf.merge import kept_base_weights
from coz_train.perf.replacement import Replacement
from coz_train.policy.adapters import load_adapter_weights, make_portable
from coz_train.zero3 import trainer_uses_zero3

log = logging.getLogger(__name__)
# TRL 1.16 reads the policy's deprecated `is_gradient_checkpointing` at every rollout: transformers' FutureWarning
# about it says nothing a user of this project can act on
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

_TRL_IMAGE_FREE_KWARGS = ("pixel_attention_mask", "spatial_shapes", "num_tiles", "image_sizes", "token_type_ids",
                          "image_position_ids")


class CozGRPOTrainer(GRPOTrainer):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fast_path: FastPath | None = None
        if self.use_vllm and not trainer_uses_zero3(self):
            self._keep_base_weights_in_vllm_sync()

    def install_fast_path(self, fast_path: FastPath) -> FastPath:
        """Make the fast path's changes to this trainer's models and processor (logged); returns it."""
        if self.fast_path is not None:
            raise RuntimeError("a fast path is installed already: remove_fast_path() first")
        self.fast_path = fast_path.install(self)
        return fast_path

    def remove_fast_path(self) -> None:
        """Every attribute the fast path replaced back as it was; TRL's own path from here on."""
        if self.fast_path is not None:
            self.fast_path.remove()
            self.fast_path = None

    def _on(self, switch: str) -> bool:
        return self.fast_path is not None and self.fast_path.on(switch)

    def _keep_base_weights_in_vllm_sync(self) -> None:
        """TRL's vLLM weight sync merges the LoRA into the live policy and unmerges it, which drifts bf16
        base weights a little at every step; the sync runs with the base weights kept bit for bit."""
        generation = getattr(self, "vllm_generation", None)
        sync = getattr(generation, "sync_weights", None)
        if sync is None:
            log.warning("TRL's vLLM generation has no sync_weights here: base weights are not guarded across syncs.")
            return
        model = self.model

        def guarded_sync(*args: Any, **kwargs: Any) -> Any:
            with kept_base_weights(self.accelerator.unwrap_model(model)):
                return sync(*args, **kwargs)

        Replacement(generation, "sync_weights", guarded_sync, "base weights kept bit for bit").apply()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        model = self.accelerator.unwrap_model(self.model)
        if self.args.should_save and is_peft_model(model):
            make_portable(output_dir or self.args.output_dir, model)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """A checkpoint's adapters load in full whatever the layout of their tensor names (PEFT's own load
        would silently skip the official layout's names)."""
        model = model if model is not None else self.model
        unwrapped = self.accelerator.unwrap_model(model)
        if not is_peft_model(unwrapped) or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        folder = Path(resume_from_checkpoint)
        for name in unwrapped.peft_config:
            path = folder if name == "default" else folder / name
            load_adapter_weights(unwrapped, path, name, key=f"resume ({folder})")

    def _prepare_inputs(self, generation_batch: Any) -> Any:
        if not self._on("group_batches"):
            return super()._prepare_inputs(generation_batch)
        with self.fast_path.preparing_inputs():
            return super()._prepare_inputs(generation_batch)

    def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
        if not self._on("merge_adapters_for_generation") or self.use_vllm:
            return super()._generate_single_turn(*args, **kwargs)
        with torch.no_grad(), self.fast_path.generating(self.accelerator.unwrap_model(self.model)):
            return super()._generate_single_turn(*args, **kwargs)

    def _get_per_token_logps_and_entropies(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                           logits_to_keep: int, batch_size: int | None = None,
                                           compute_entropy: bool = False, compute_aux_loss: bool = False,
                                           pixel_values: torch.Tensor | None = None,
                                           image_grid_thw: torch.Tensor | None = None,
                                           num_images: list[int] | None = None, **kwargs: Any) -> Any:
        plain = (not self._on("group_prefix") or compute_aux_loss
                 or any(kwargs.get(k) is not None for k in _TRL_IMAGE_FREE_KWARGS)
                 or (pixel_values is not None and image_grid_thw is None))
        if plain:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                pixel_values=pixel_values, image_grid_thw=image_grid_thw, num_images=num_images, **kwargs)
        mm_token_type_ids = kwargs.get("mm_token_type_ids")
        batch_size = batch_size or input_ids.size(0)
        if image_grid_thw is not None:
            num_images = list(num_images) if num_images is not None else None
            image_rows = image_grid_thw.prod(-1)
            counts = num_images or [image_grid_thw.shape[0] // input_ids.size(0)] * input_ids.size(0)
            images_before = [0, *torch.tensor(counts).cumsum(0).tolist()]
            rows_before = [0, *image_rows.cumsum(0).tolist()]
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            end = min(start + batch_size, input_ids.size(0))
            inputs: dict[str, Any] = {"input_ids": input_ids[start:end], "attention_mask": attention_mask[start:end]}
            spec = {"logits_to_keep": logits_to_keep, "temperature": self.temperature,
                    "cast_lm_head_to_fp32": bool(self.args.cast_lm_head_to_fp32), "compute_entropy": compute_entropy,
                    "entropy_grad": bool(getattr(self, "_entropy_bonus_enabled", True))}
            if image_grid_thw is not None:
                first, last = images_before[start], images_before[end]
                inputs["pixel_values"] = pixel_values[rows_before[first]:rows_before[last]]
                inputs["image_grid_thw"] = image_grid_thw[first:last]
                spec["num_images"] = counts[start:end]
            if mm_token_type_ids is not None:
                inputs["mm_token_type_ids"] = mm_token_type_ids[start:end]
            with self.accelerator.autocast():
                out = model(**inputs, **{KWARG: spec})
            logps.append(out.log_probs)
            if compute_entropy:
                entropies.append(out.entropy)
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None
