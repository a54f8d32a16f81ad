"""TRL's GRPOTrainer with the `perf` fast path and adapters in the official Chain-of-Zoom layout.

The `perf.*` switches (docs/performance.md) are one `coz_train.perf.fast_path.FastPath`, installed with
`trainer.install_fast_path(FastPath(cfg.perf))` (it logs each attribute it replaces) and taken off with
`trainer.remove_fast_path()`; without one, or with every switch off, the trainer runs TRL's own path. They act
through the models' own forward and generate (`coz_train.perf.model`) and the processor's components: no TRL
method is overridden for speed. With vLLM generating, TRL's weight sync keeps the base weights bit for bit
(`coz_train.perf.trl_seams`).

Every adapter the trainer writes (`checkpoint-N/`, the final `adapter/`) is rewritten into the layout
the official Chain-of-Zoom inference loads, and resuming loads it back in full
(`coz_train.policy.adapters`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from accelerate.utils import is_peft_model
from trl import GRPOTrainer

from coz_train.perf.fast_path import FastPath
from coz_train.perf.trl_seams import vllm_base_weights
from coz_train.policy.adapters import load_adapter_weights, make_portable
from coz_train.zero3 import trainer_uses_zero3

log = logging.getLogger(__name__)
# TRL 1.16 reads the policy's deprecated `is_gradient_checkpointing` at every rollout: transformers' FutureWarning
# about it says nothing a user of this project can act on
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

class CozGRPOTrainer(GRPOTrainer):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fast_path: FastPath | None = None
        self.vllm_sync_guard = vllm_base_weights(self) if self.use_vllm and not trainer_uses_zero3(self) else None

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

    # -- adapters in the official layout (checkpointing, not speed: the two TRL/Trainer methods overridden) ----

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
