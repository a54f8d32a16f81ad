"""Qwen2-VL / Qwen2.5-VL classes with switchable fast paths: the model-side `perf` switches as subclasses.

`load_vlm` (coz_train/policy/load.py) loads every Qwen2-VL / Qwen2.5-VL model as `switchable_class(cls)`: a
subclass of the library's own ForConditionalGeneration whose backbone (`model.model`) is a subclass of the
library's own backbone. With every switch off, which is how a model loads, both run the library's code
unchanged (`super().forward`, `super().generate`). A switch is one object set on the model, visible where it is
installed (`coz_train.perf.fast_path.FastPath.install` logs each):

- backbone `shared_prompt` (`perf.group_prefix`, a `coz_train.perf.group_prefix.SharedPrompt`): the backbone's
  `forward`, called with full sequences (input_ids, attention_mask, pixel_values, image_grid_thw,
  mm_token_type_ids: what TRL's log-prob and training passes send it through the LM head), runs each prefix
  that rows share once and only the rows' own tokens on top, and returns the same `last_hidden_state`;
- backbone `vision_cache` (`perf.vision_cache`, a `coz_train.perf.vision_cache.VisionFeatureCache`): the
  backbone's `get_image_features` hands out stored features of images it has encoded;
- `rollout_prefix` (`perf.rollout_prefix`, a `coz_train.perf.rollout_prefix.RolloutPrefix`): `generate`
  prefills each distinct prompt once;
- `merge_adapters_for_generation` (bool): `generate` runs with the LoRA merged into the base weights, which are
  restored bit for bit afterwards (`coz_train.perf.merge`);
- `compiled_decode` (bool): `generate` decodes with a static cache and compiled steps
  (`coz_train.perf.compiled_decode`).

These are the public seams of the libraries: a model's `forward`, `get_image_features` and `generate`, reached
through PEFT, DDP/DeepSpeed and TRL as any model's are. Nothing of TRL's is overridden for them.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from coz_train.perf.prefix import SUPPORTED_MODEL_TYPES, unwrap

_CLASSES: dict[type, type] = {}


class SwitchableBackbone:
    """Mixed in before a Qwen-VL backbone class (`Qwen2_5_VLModel`, `Qwen2VLModel`)."""

    shared_prompt: Any = None  # perf.group_prefix
    vision_cache: Any = None  # perf.vision_cache

    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None,
                           **kwargs: Any) -> Any:
        if self.vision_cache is None:
            return super().get_image_features(pixel_values, image_grid_thw, **kwargs)
        return self.vision_cache(pixel_values, image_grid_thw, **kwargs)

    def library_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None,
                               **kwargs: Any) -> Any:
        """The library's own `get_image_features` (what the vision cache runs on a miss)."""
        return super().get_image_features(pixel_values, image_grid_thw, **kwargs)

    def library_forward(self, *args: Any, **kwargs: Any) -> Any:
        """The library's own `forward` (what the shared-prompt path runs its passes with)."""
        return super().forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.shared_prompt is None or args:
            return super().forward(*args, **kwargs)
        return self.shared_prompt(self, kwargs)


class SwitchableVLM:
    """Mixed in before a Qwen-VL ForConditionalGeneration class; builds its backbone as a `SwitchableBackbone`."""

    rollout_prefix: Any = None  # perf.rollout_prefix
    merge_adapters_for_generation = False
    compiled_decode = False

    def __init__(self, config: Any, *args: Any, **kwargs: Any):
        super().__init__(config, *args, **kwargs)
        # the library builds its own backbone class; the same one again as its switchable subclass (on the meta
        # device when loaded with from_pretrained, so the first build costs no memory)
        self.model = switchable_backbone_class(type(self.model))(config)
        self.post_init()

    def library_generate(self, *args: Any, **kwargs: Any) -> Any:
        """transformers' own `generate` (what the rollout prefix hands the shared prefill to)."""
        return super().generate(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        if not (self.rollout_prefix is not None or self.merge_adapters_for_generation or self.compiled_decode):
            return super().generate(*args, **kwargs)
        from coz_train.perf.compiled_decode import compiled_generation_config
        from coz_train.perf.merge import merged_adapters

        if self.compiled_decode and kwargs.get("generation_config") is not None:
            given = kwargs["generation_config"]
            made = self.__dict__.get("compiled_generation")
            if made is None or made[0] is not given:  # one compiled copy per config object (TRL keeps one)
                made = self.__dict__["compiled_generation"] = (given, compiled_generation_config(given))
            kwargs["generation_config"] = made[1]
            kwargs.pop("disable_compile", None)  # the compiled config asks for compiled steps itself
        merged = merged_adapters(self) if self.merge_adapters_for_generation else nullcontext()
        with torch.no_grad(), merged:
            if self.rollout_prefix is not None:
                return self.rollout_prefix.generate(*args, **kwargs)
            return super().generate(*args, **kwargs)


def _subclass(mixin: type, base: type) -> type:
    """`Switchable<Base>`, made once per class. transformers finds a checkpoint's weight renamings (older Qwen-VL
    checkpoints name the language model's weights differently) by class name: the subclass is registered with its
    base's renamings through the library's public registry."""
    if issubclass(base, mixin):
        return base
    if base not in _CLASSES:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )

        name = f"Switchable{base.__name__}"
        _CLASSES[base] = type(name, (mixin, base),
                              {"__module__": __name__, "__doc__": f"{base.__name__} with switchable fast paths."})
        renamings = get_checkpoint_conversion_mapping(base.__name__)
        if renamings is not None:
            register_checkpoint_conversion_mapping(name, renamings, overwrite=True)
    return _CLASSES[base]


def switchable_backbone_class(base: type) -> type:
    return _subclass(SwitchableBackbone, base)


def switchable_class(base: type) -> type:
    """The switchable subclass of a Qwen-VL ForConditionalGeneration class (made once per class)."""
    return _subclass(SwitchableVLM, base)


def switchable(model: Any, what: str) -> tuple[Any, Any]:
    """(the switchable ForConditionalGeneration inside any wrappers, its backbone); a ValueError naming the switch
    when the model was not loaded with `load_vlm` as a Qwen2-VL / Qwen2.5-VL model."""
    inner = unwrap(model)
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{what} needs a Qwen2-VL or Qwen2.5-VL model (M-RoPE positions); this one is "
                         f"'{model_type}'. Set {what}=false for this model.")
    if not isinstance(inner, SwitchableVLM):
        raise ValueError(f"{what} needs the model loaded with coz_train.policy.load_vlm (its switchable class "
                         f"{switchable_class(type(inner)).__name__}); this one is a plain {type(inner).__name__}.")
    return inner, inner.model
