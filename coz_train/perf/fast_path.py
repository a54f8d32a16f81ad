"""The `perf` switches of a training run as one object: `FastPath(cfg.perf)`, installed on the trainer with
`trainer.install_fast_path(...)` and taken off again with `trainer.remove_fast_path()`.

`install` makes every change the switches need, each one a logged `Replacement` of an attribute:
- `load_once`: the trainer's training dataset becomes a `RowsOnce` over it (`coz_train.perf.load_once`);
- `image_cache`: the processor's image processor becomes a `CachedImageProcessor` (`coz_train.perf.image_cache`);
- `text_cache`: the processor's tokenizer becomes a `DedupTokenizer` (`coz_train.perf.text_cache`);
- `dedup_prompts`: the trainer's processor becomes a `DedupPrompts` over it, whose call processes each distinct
  prompt once (`coz_train.perf.dedup_prompts`);
- `vision_cache`: the policy's (and the reference model's) backbone gets a `VisionFeatureCache` as its
  `vision_cache`, which its `get_image_features` asks (`coz_train.perf.vision_cache`);
- `pixel_handles`: the cached image processor hands out `PixelHandles` and the vision caches read the pixels
  from it (`coz_train.perf.image_cache`); needs `image_cache` and `vision_cache`;
- `group_prefix`: the models' backbones get a `SharedPrompt` as their `shared_prompt`, which their `forward`
  runs TRL's full-sequence passes with (`coz_train.perf.group_prefix`), and TRL's fused log-prob forward on the
  models scores the completion positions only (`coz_train.perf.trl_seams.CompletionScoring`);
- `rollout_prefix`: the policy gets a `RolloutPrefix` as its `rollout_prefix`: its `generate` prefills each
  distinct prompt once (`coz_train.perf.rollout_prefix`);
- `merge_adapters_for_generation`, `compiled_decode`: flags on the policy, read by its `generate`
  (`coz_train.perf.merge`, `coz_train.perf.compiled_decode`); not with vLLM, which generates instead;
- `group_batches`: TRL's row shuffle of a generation batch replaced by a whole-group shuffle
  (`coz_train.perf.trl_seams`: the TRL parts without a setting, each named).
The model-side switches live on the model's own classes (`coz_train.perf.model`: how `load_vlm` loads Qwen-VL
models); nothing of TRL's trainer is overridden for speed. The critic is not the trainer's: the critic reward
applies `perf.image_cache` to its own processor and `perf.critic_prefix` to its scoring
(`coz_train.rewards.critic.reward`).

`remove` puts back every replaced attribute (the very objects that were there) in reverse order.
With no switch on, `install` changes nothing and the trainer runs TRL's own path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from coz_train.perf.compiled_decode import check_cache_implementation
from coz_train.perf.dedup_prompts import install_dedup_prompts
from coz_train.perf.group_prefix import SharedPrompt
from coz_train.perf.image_cache import install_image_cache
from coz_train.perf.load_once import RowsOnce
from coz_train.perf.model import switchable
from coz_train.perf.replacement import Replacement, recorded
from coz_train.perf.rollout_prefix import RolloutPrefix
from coz_train.perf.text_cache import install_text_cache
from coz_train.perf.trl_seams import completion_scoring, group_batches
from coz_train.perf.vision_cache import VisionFeatureCache, refuse_trained_vision
from coz_train.zero3 import trainer_uses_zero3

log = logging.getLogger(__name__)

SWITCHES = ("load_once", "image_cache", "text_cache", "dedup_prompts", "vision_cache", "pixel_handles",
            "group_prefix", "group_batches", "merge_adapters_for_generation", "rollout_prefix", "compiled_decode")


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
        if self.on("dedup_prompts") and (dedup := install_dedup_prompts(trainer)) is not None:
            self.changes.append(Replacement(trainer, "processing_class", dedup, "dedup_prompts").apply())
        if self.on("vision_cache"):
            for role, model in models:
                inner, backbone = switchable(model, "perf.vision_cache")
                refuse_trained_vision(inner)
                cache = VisionFeatureCache(backbone.library_image_features, self.vision_cache_images)
                self.changes.append(Replacement(backbone, "vision_cache", cache, f"vision_cache, {role}").apply())
                self.vision_caches.append(cache)
                if self.on("pixel_handles"):
                    self.changes.append(Replacement(cache, "pixel_source", self.image_cache, "pixel_handles").apply())
        if self.on("group_prefix"):
            for role, model in models:
                inner, backbone = switchable(model, "perf.group_prefix")
                shared = SharedPrompt()
                self.changes.append(Replacement(backbone, "shared_prompt", shared, f"group_prefix, {role}").apply())
                scoring = completion_scoring(inner, shared)
                if scoring is not None:
                    self.changes.append(scoring)
        policy, _ = switchable(trainer.model, "perf") if self.model_side_generation(trainer) else (None, None)
        if self.on("rollout_prefix"):
            self.rollout_prefix = RolloutPrefix(policy, policy.library_generate)
            self.changes.append(Replacement(policy, "rollout_prefix", self.rollout_prefix, "rollout_prefix").apply())
        for flag in ("merge_adapters_for_generation", "compiled_decode"):
            if self.on(flag) and not trainer.use_vllm:
                self.changes.append(Replacement(policy, flag, True, flag).apply())
        if self.on("group_batches"):
            self.changes.append(group_batches())
        self.trainer = trainer
        if self.changes:
            log.info("perf fast path installed: %s", "; ".join(map(str, self.changes)))
        return self

    def model_side_generation(self, trainer: Any) -> bool:
        """Whether a switch acts in the policy's own `generate` (none does when vLLM generates)."""
        return (self.on("rollout_prefix") or (not trainer.use_vllm and (
            self.on("merge_adapters_for_generation") or self.on("compiled_decode"))))

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
        if self.on("compiled_decode") and not trainer.use_vllm:
            check_cache_implementation(trainer.generation_config.cache_implementation)

