"""The `perf` switches of a training run as one object: `FastPath(cfg.perf)`, installed on the trainer with
`trainer.install_fast_path(...)` and taken off again with `trainer.remove_fast_path()`.

`install` makes every run-time change the switches need and logs each one:
- `load_once`: the trainer's training dataset becomes a `RowsOnce` over it (`coz_train.perf.load_once`);
- `image_cache`: the processor's image processor becomes a `CachedImageProcessor` (`coz_train.perf.image_cache`);
- `text_cache`: the processor's tokenizer becomes a `DedupTokenizer` (`coz_train.perf.text_cache`);
- `vision_cache`: the policy's (and the reference model's) `get_image_features` becomes a content-keyed
  `VisionFeatureCache` (`coz_train.perf.vision_cache`);
- `pixel_handles`: the cached image processor hands out pixel handles and the vision caches read the pixels
  from it (`coz_train.perf.image_cache`); needs `image_cache` and `vision_cache`;
- `group_prefix`: the models' `forward` accepts the group-shared log-prob spec (`coz_train.perf.group_prefix`);
- `rollout_prefix`: the policy's `generate` prefills each distinct prompt once (`coz_train.perf.rollout_prefix`);
- `compiled_decode`: the trainer's generation config asks for a static cache and compiled decode steps.
Two switches act per call instead, inside the TRL methods the trainer overrides: `group_batches` (TRL's row
shuffle replaced by a whole-group shuffle while a generation batch is prepared) and
`merge_adapters_for_generation` (the LoRA merged into the base weights during rollouts). The critic is not the
trainer's: the critic reward applies `perf.image_cache` to its own processor and `perf.critic_prefix` to its
scoring (`coz_train.rewards.critic.reward`).

`remove` puts back every replaced attribute (the very objects that were there) in reverse order.
With no switch on, `install` changes nothing and the trainer runs TRL's own path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from coz_train.perf.compiled_decode import compiled_generation_config
from coz_train.perf.group_batches import group_shuffle
from coz_train.perf.group_prefix import install_group_prefix
from coz_train.perf.image_cache import install_image_cache
from coz_train.perf.load_once import RowsOnce
from coz_train.perf.merge import merged_adapters
from coz_train.perf.prefix import unwrap
from coz_train.perf.replacement import Replacement, recorded, replaced
from coz_train.perf.rollout_prefix import install_rollout_prefix
from coz_train.perf.text_cache import install_text_cache
from coz_train.perf.vision_cache import install_vision_cache
from coz_train.zero3 import trainer_uses_zero3

log = logging.getLogger(__name__)

SWITCHES = ("load_once", "image_cache", "text_cache", "vision_cache", "pixel_handles", "group_prefix",
            "group_batches", "merge_adapters_for_generation", "rollout_prefix", "compiled_decode")


class FastPath:
    def __init__(self, perf: Mapping | None):
        self.switches = {name: bool((perf or {}).get(name, False)) for name in SWITCHES}
        self.vision_cache_images = int((perf or {}).get("vision_cache_images", 64))
        # with pixel handles the image cache holds every image whose handle the vision caches may still resolve
        self.image_cache_images = max(64, self.vision_cache_images)
        self.changes: list[Replacement] = []
        self.image_cache = None
        self.vision_caches: list = []
        self.rollout_prefix = None
        self.trainer: Any = None

    def on(self, switch: str) -> bool:
        return self.switches[switch]

    @property
    def any_on(self) -> bool:
        return any(self.switches.values())

    # -- installing and removing ------------------------------------------------------------------------------

    def install(self, trainer: Any) -> FastPath:
        if self.trainer is not None:
            raise RuntimeError("this FastPath is installed already; remove it first")
        self.refuse_unsupported(trainer, trainer_uses_zero3(trainer))
        models = [("policy", trainer.model)] + ([("reference", trainer.ref_model)] if trainer.ref_model is not None
                                                else [])
        processor = trainer.processing_class
        if self.on("load_once"):
            keep = trainer.args.generation_batch_size // trainer.num_generations  # distinct rows per generation batch
            self.changes.append(Replacement(trainer, "train_dataset", RowsOnce(trainer.train_dataset, keep),
                                            "load_once").apply())
        if self.on("image_cache") and getattr(processor, "image_processor", None) is not None:
            handles = self.on("pixel_handles")
            self.image_cache = self._record(processor, "image_processor", "image_cache",
                                            lambda: install_image_cache(processor, self.image_cache_images, handles))
        if self.on("text_cache") and getattr(processor, "tokenizer", None) is not None:
            self._record(processor, "tokenizer", "text_cache", lambda: install_text_cache(processor))
        if self.on("vision_cache"):
            for role, model in models:
                inner = unwrap(model).model
                self.vision_caches.append(self._record(
                    inner, "get_image_features", f"vision_cache, {role}",
                    lambda m=model: install_vision_cache(m, self.vision_cache_images)))
                if self.on("pixel_handles"):
                    self.changes.append(Replacement(self.vision_caches[-1], "pixel_source", self.image_cache,
                                                    "pixel_handles").apply())
        if self.on("group_prefix"):
            for role, model in models:
                self._record(unwrap(model), "forward", f"group_prefix, {role}", lambda m=model: install_group_prefix(m))
        if self.on("rollout_prefix"):
            inner = unwrap(trainer.model)
            before = {name: Replacement.own_value(inner, name) for name in ("generate", "_coz_rollout_prefix")}
            self.rollout_prefix = install_rollout_prefix(trainer.model)
            self.changes += [Replacement.observed(inner, name, "rollout_prefix", old) for name, old in before.items()]
        if self.on("compiled_decode") and not trainer.use_vllm:
            self.changes.append(Replacement(trainer, "generation_config",
                                            compiled_generation_config(trainer.generation_config),
                                            "compiled_decode").apply())
        self.trainer = trainer
        per_call = [name for name in ("group_batches", "merge_adapters_for_generation") if self.on(name)]
        if self.changes or per_call:
            log.info("perf fast path installed: %s%s", "; ".join(map(str, self.changes)) or "no attribute replaced",
                     f"; per call: {', '.join(per_call)}" if per_call else "")
        return self

    def remove(self) -> None:
        """Every replaced attribute back as it was (the caches keep their hit counts for reports)."""
        for change in reversed(self.changes):
            change.undo()
        if self.changes:
            log.info("perf fast path removed: %d attributes restored", len(self.changes))
        self.changes.clear()
        self.trainer = None

    def _record(self, owner: Any, name: str, reason: str, install: Callable[[], Any]) -> Any:
        return recorded(self.changes, owner, name, reason, install)

    def refuse_unsupported(self, trainer: Any, zero3: bool) -> None:
        """Combinations that cannot work, refused before anything is changed."""
        if self.on("pixel_handles") and not (self.on("image_cache") and self.on("vision_cache")):
            # e.g. `perf=fast perf.vision_cache=false` (what the ZeRO-3 refusal advises): the handles have nothing
            # to ride on, so the switch steps aside rather than stopping the run
            log.info("perf.pixel_handles steps aside: it needs perf.image_cache (which hands out the handles) and "
                     "perf.vision_cache (which reads them), and one of them is off.")
            self.switches["pixel_handles"] = False
        for switch, why in (("vision_cache", "a rank whose images are all cached would skip the vision tower's "
                                             "parameter gathers the other ranks wait for"),
                            ("merge_adapters_for_generation", "the weights are sharded"),
                            ("compiled_decode", "the decode step would be compiled around DeepSpeed's parameter "
                                                "gathers")):
            if zero3 and self.on(switch) and not (switch == "compiled_decode" and trainer.use_vllm):
                raise ValueError(f"perf.{switch} does not work with DeepSpeed ZeRO-3 ({why}): set "
                                 f"perf.{switch}=false or use ZeRO-2.")
        if self.on("merge_adapters_for_generation"):
            from peft import PeftModel

            if not isinstance(trainer.model, PeftModel):
                raise ValueError("perf.merge_adapters_for_generation=true needs a LoRA policy (PEFT).")
        if self.on("group_batches"):
            import trl.trainer.grpo_trainer as trl_grpo

            if not hasattr(trl_grpo, "shuffle_sequence_dict"):
                raise RuntimeError("perf.group_batches: this TRL version has no shuffle_sequence_dict to replace; "
                                   "set perf.group_batches=false.")

    # -- the per-call switches ----------------------------------------------------------------------------------

    def preparing_inputs(self) -> AbstractContextManager:
        """Around TRL's `_prepare_inputs`: whole groups shuffled together (`perf.group_batches`)."""
        if not self.on("group_batches"):
            return nullcontext()
        import trl.trainer.grpo_trainer as trl_grpo

        return replaced(trl_grpo, "shuffle_sequence_dict", group_shuffle, "group_batches")

    def generating(self, model: Any) -> AbstractContextManager:
        """Around TRL's rollouts: the LoRA merged into the base weights (`perf.merge_adapters_for_generation`)."""
        if not self.on("merge_adapters_for_generation") or self.trainer is None or self.trainer.use_vllm:
            return nullcontext()
        return merged_adapters(model)
