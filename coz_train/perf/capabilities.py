"""What the `perf` switches need of transformers, TRL, PEFT and torch, checked before any model loads.

Each switch reaches a library at a few seams: a keyword of a Qwen-VL backbone's `forward`, a cache class, the
TRL function it replaces while training. A seam here is a cheap check of one of them that needs no weights
(imports, `inspect.signature` parameters, attributes, and where nothing else can tell, whether the source of a
library function makes the call the switch relies on). `check_capabilities(cfg.perf)` runs the seams of the
switches that are on and stops the run with one error naming every switch and seam that changed; a release
whose seams hold runs the switches, whatever its version number. `seam_report()` gives every seam's status;
`python -m coz_train.perf.capabilities [--json PATH]` prints it (`python -m coz_train.compat` runs it in its
scratch venv on the releases it tries).

A seam that holds says the switch can start; that it stays exact is what the equality tests in tests/perf/
check on each release.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

SWITCHES = ("load_once", "image_cache", "text_cache", "dedup_prompts", "vision_cache", "pixel_handles",
            "group_prefix", "group_batches", "critic_prefix", "merge_adapters_for_generation", "rollout_prefix", "compiled_decode")
LIBRARIES = ("transformers", "trl", "peft", "torch")  # named with their versions in the error
PINNED_INSTALL = "pip install -c .ci/constraints.txt -e ."
BACKBONES = ("Qwen2_5_VLModel", "Qwen2VLModel")  # the Qwen-VL language backbones the prefix switches run
GENERATORS = ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration")
PREFIX = ("group_prefix", "critic_prefix", "rollout_prefix")  # the shared-prefix switches (coz_train/perf/prefix.py)


class SeamChanged(Exception):
    """A library no longer offers what a seam needs; the message says what changed."""


@dataclass(frozen=True)
class Seam:
    name: str
    switches: tuple[str, ...]
    check: Callable[[], None]  # returns when the seam holds, raises (SeamChanged or any error) when it changed


@dataclass(frozen=True)
class SeamStatus:
    name: str
    switches: tuple[str, ...]
    holds: bool
    why: str = ""  # what changed, when it does not hold

    def as_dict(self) -> dict:
        return {"name": self.name, "switches": list(self.switches), "holds": self.holds, "why": self.why}


def need(condition: bool, message: str) -> None:
    if not condition:
        raise SeamChanged(message)


def takes(what: str, func: Any, names: tuple[str, ...]) -> None:
    """`func` has each of `names` as a named parameter (a `**kwargs` would swallow a keyword it does not know)."""
    parameters = inspect.signature(func).parameters
    missing = [name for name in names if name not in parameters]
    need(not missing, f"{what} has no {', '.join(f'`{n}`' for n in missing)} parameter")


def mentions(what: str, func: Any, *texts: str) -> None:
    """The source of `func` makes the call (or reads the name) the seam relies on."""
    source = inspect.getsource(func)
    missing = [text for text in texts if text not in source]
    need(not missing, f"{what} no longer contains {', '.join(f'`{t}`' for t in missing)}")


def transformers_classes(names: tuple[str, ...]) -> list[type]:
    import transformers

    missing = [name for name in names if not hasattr(transformers, name)]
    need(not missing, f"transformers has no {', '.join(missing)}")
    return [getattr(transformers, name) for name in names]


def output_fields(func: Any) -> list[set[str]]:
    """Field names of the model-output dataclasses a function's return annotation names (empty: none named)."""
    annotation = inspect.signature(func).return_annotation
    options = typing.get_args(annotation) or (annotation,)
    return [{f.name for f in dataclasses.fields(option)} for option in options
            if isinstance(option, type) and dataclasses.is_dataclass(option)]


# -- the seams -------------------------------------------------------------------------------------------------


def backbone_cache_keyword() -> None:
    """The backbones' `forward` takes the prefix passes' inputs and the KV cache as `cache` (transformers >= 5.24;
    before, `past_key_values`), and returns the cache under that name."""
    for cls in transformers_classes(BACKBONES):
        parameters = inspect.signature(cls.forward).parameters
        if "cache" not in parameters and "past_key_values" in parameters:
            raise SeamChanged(f"{cls.__name__}.forward takes the KV cache as `past_key_values`, not `cache` (the "
                              "keyword of transformers >= 5.24 the prefix passes use)")
        takes(f"{cls.__name__}.forward", cls.forward, ("input_ids", "attention_mask", "position_ids", "pixel_values",
                                                       "image_grid_thw", "mm_token_type_ids", "use_cache", "cache"))
        outputs = output_fields(cls.forward)
        need(not outputs or any({"last_hidden_state", "cache"} <= fields for fields in outputs),
             f"{cls.__name__}.forward's output has no `cache` field")


def backbone_rope_index() -> None:
    """The M-RoPE positions come from the backbone's own `get_rope_index`."""
    for cls in transformers_classes(BACKBONES):
        need(hasattr(cls, "get_rope_index"), f"{cls.__name__} has no get_rope_index")
        takes(f"{cls.__name__}.get_rope_index", cls.get_rope_index,
              ("input_ids", "mm_token_type_ids", "image_grid_thw", "attention_mask"))


def dynamic_cache_rows() -> None:
    """`DynamicCache(config=)` for a Qwen-VL config, whose layers repeat a prefix's rows (`batch_select_indices`)."""
    from transformers import DynamicCache, Qwen2_5_VLConfig

    takes("DynamicCache", DynamicCache, ("config",))
    cache = DynamicCache(config=Qwen2_5_VLConfig())  # a config only: no weights, no tensors
    need(hasattr(cache, "get_seq_length") and bool(cache.layers), "DynamicCache(config=) builds no layers")
    kinds = sorted({type(layer).__name__ for layer in cache.layers if not hasattr(layer, "batch_select_indices")})
    need(not kinds, f"DynamicCache layers {', '.join(kinds)} have no batch_select_indices")


def static_cache() -> None:
    """The rollouts' kept static cache: `StaticCache(config=, max_cache_len=)`, reset between calls."""
    from transformers import StaticCache

    takes("StaticCache", StaticCache, ("config", "max_cache_len"))
    need(hasattr(StaticCache, "reset"), "StaticCache has no reset")


def generate_cache_keyword() -> None:
    """`generate(..., cache=prefix_cache)` starts from the given cache: `generate` reads the `cache` keyword
    (its signature takes **kwargs, so only its cache preparation tells)."""
    from transformers import GenerationMixin

    prepare = getattr(GenerationMixin, "_prepare_cache_for_generation", None)
    need(prepare is not None, "GenerationMixin has no _prepare_cache_for_generation")
    source = inspect.getsource(prepare)
    need('model_kwargs.get("cache")' in source or "model_kwargs.get('cache')" in source,
         "generate does not take a given KV cache as `cache` (GenerationMixin._prepare_cache_for_generation reads "
         "no `cache` keyword: transformers < 5.24 names it past_key_values)")


def generate_rope_deltas() -> None:
    """A generation that continues a cache places its tokens after the backbone's `rope_deltas`, which the
    rollouts set for the shared prefix."""
    for cls in transformers_classes(GENERATORS):
        own = [value for value in vars(cls).values() if inspect.isfunction(value)]
        need(any("self.model.rope_deltas" in inspect.getsource(func) for func in own),
             f"{cls.__name__} no longer reads `self.model.rope_deltas` when generating")


def fused_lm_head_backbone() -> None:
    """TRL's log-prob pass (`model(**inputs, labels=..., fused_lm_head=True)`) runs the full sequences through the
    backbone, which it reaches as `base_model`, then the LM head on the completion positions: the shared prompt
    works inside that backbone call; given pre-shifted `shift_labels`, it scores the backbone's output as it is
    (what `coz_train.perf.trl_seams.CompletionScoring` relies on to score the completion positions only)."""
    from trl.trainer import utils

    head = getattr(utils, "add_fused_lm_head", None)
    need(head is not None, "trl.trainer.utils has no add_fused_lm_head")
    mentions("trl.trainer.utils.add_fused_lm_head", head, '"base_model"', "getattr(self, ")
    # CompletionScoring (coz_train.perf.trl_seams) hands the forward pre-shifted labels of the scored positions
    mentions("trl.trainer.utils.add_fused_lm_head", head, "shift_labels", "last_hidden_state")


def trl_rollouts_generate() -> None:
    """TRL's rollouts outside vLLM call the policy's own `generate` (the seam of the generation-side switches), and
    its log-prob pass calls the model with the fused head (the seam of `group_prefix`)."""
    import trl.trainer.grpo_trainer as grpo

    mentions("GRPOTrainer._generate_single_turn", grpo.GRPOTrainer._generate_single_turn, "unwrapped_model.generate(")
    mentions("GRPOTrainer._get_per_token_logps_and_entropies", grpo.GRPOTrainer._get_per_token_logps_and_entropies,
             "fused_lm_head=True")


def image_features() -> None:
    """The vision cache replaces the backbone's `get_image_features(pixel_values, image_grid_thw, **kwargs)`,
    whose output's `pooler_output` holds the per-image features, and the backbone's forward calls it."""
    for cls in transformers_classes(BACKBONES):
        func = getattr(cls, "get_image_features", None)
        need(func is not None, f"{cls.__name__} has no get_image_features")
        takes(f"{cls.__name__}.get_image_features", func, ("pixel_values", "image_grid_thw"))
        need(any(p.kind is p.VAR_KEYWORD for p in inspect.signature(func).parameters.values()),
             f"{cls.__name__}.get_image_features takes no further keywords (return_dict=True)")
        outputs = output_fields(func)
        need(not outputs or any("pooler_output" in fields for fields in outputs),
             f"{cls.__name__}.get_image_features returns no `pooler_output`")
        mentions(f"{cls.__name__}.forward", cls.forward, "self.get_image_features(", "pooler_output")


def processor_parts() -> None:
    """The caches replace the Qwen2.5-VL processor's `image_processor` and `tokenizer`."""
    (processor,) = transformers_classes(("Qwen2_5_VLProcessor",))
    parts = processor.get_attributes() if hasattr(processor, "get_attributes") else getattr(processor, "attributes", [])
    missing = [name for name in ("image_processor", "tokenizer") if name not in (parts or [])]
    need(not missing, f"Qwen2_5_VLProcessor has no {', '.join(missing)} part")


def processor_call() -> None:
    """`perf.dedup_prompts` sets the trainer's `processing_class` to a subclass of the processor's class whose call
    serves repeated rows: TRL calls the processor through that attribute, images and text per row."""
    import trl.trainer.grpo_trainer as grpo

    (processor,) = transformers_classes(("Qwen2_5_VLProcessor",))
    takes("Qwen2_5_VLProcessor.__call__", processor.__call__, ("images", "text"))
    mentions("GRPOTrainer._generate_and_score_completions", grpo.GRPOTrainer._generate_and_score_completions,
             "self.processing_class(images=images, text=")
    mentions("GRPOTrainer._tokenize_prompts", grpo.GRPOTrainer._tokenize_prompts,
             "self.processing_class.apply_chat_template(")


def row_shuffle() -> None:
    """`perf.group_batches` replaces TRL's module function `shuffle_sequence_dict` while `_prepare_inputs` runs
    (TRL has no option for the order of rows within a generation batch)."""
    import trl.trainer.grpo_trainer as grpo

    need(hasattr(grpo, "shuffle_sequence_dict"), "trl.trainer.grpo_trainer has no shuffle_sequence_dict")
    mentions("GRPOTrainer._prepare_inputs", grpo.GRPOTrainer._prepare_inputs, "shuffle_sequence_dict(")


def lora_merge() -> None:
    """The rollouts merge each active LoRA layer into its base weights and unmerge it after."""
    from peft.tuners.lora import LoraLayer

    missing = [name for name in ("merge", "unmerge", "get_base_layer", "merged", "active_adapters")
               if not hasattr(LoraLayer, name)]
    need(not missing, f"peft's LoraLayer has no {', '.join(missing)}")
    takes("LoraLayer.merge", LoraLayer.merge, ("adapter_names",))


def compile_config() -> None:
    """The compiled decode step: `CompileConfig(fullgraph, dynamic, mode)` told to compile on every device, on a
    generation config with `cache_implementation` and `disable_compile`."""
    from transformers.generation.configuration_utils import CompileConfig, GenerationConfig

    takes("CompileConfig", CompileConfig, ("fullgraph", "dynamic", "mode"))
    need(hasattr(CompileConfig, "_compile_all_devices"), "CompileConfig has no _compile_all_devices")
    config = GenerationConfig()
    missing = [name for name in ("cache_implementation", "disable_compile") if not hasattr(config, name)]
    need(not missing, f"GenerationConfig has no {', '.join(missing)}")


def dataset_protocol() -> None:
    """`perf.load_once` is a torch Dataset of its own: the DataLoader calls its `__getitems__` where it batches
    and `__getitem__` where it does not, giving the same rows either way. It replaces no library internal, so
    this seam always holds."""


SEAMS = (
    Seam("backbone forward(cache=)", PREFIX, backbone_cache_keyword),
    Seam("backbone get_rope_index", PREFIX, backbone_rope_index),
    Seam("DynamicCache(config=) rows", PREFIX, dynamic_cache_rows),
    Seam("StaticCache(config=, max_cache_len=)", ("rollout_prefix",), static_cache),
    Seam("generate(cache=)", ("rollout_prefix",), generate_cache_keyword),
    Seam("generate reads rope_deltas", ("rollout_prefix",), generate_rope_deltas),
    Seam("TRL fused LM head -> backbone", ("group_prefix",), fused_lm_head_backbone),
    Seam("TRL rollouts -> model.generate, log-probs -> fused head",
         ("group_prefix", "rollout_prefix", "merge_adapters_for_generation", "compiled_decode"), trl_rollouts_generate),
    Seam("backbone get_image_features", ("vision_cache", "pixel_handles"), image_features),
    Seam("Qwen2.5-VL processor parts", ("image_cache", "text_cache", "pixel_handles"), processor_parts),
    Seam("processor call, per row", ("dedup_prompts",), processor_call),
    Seam("TRL shuffle_sequence_dict", ("group_batches",), row_shuffle),
    Seam("PEFT LoraLayer merge", ("merge_adapters_for_generation",), lora_merge),
    Seam("CompileConfig / GenerationConfig", ("compiled_decode",), compile_config),
    Seam("torch Dataset rows", ("load_once",), dataset_protocol),
)


# -- running them ----------------------------------------------------------------------------------------------


def status_of(seam: Seam) -> SeamStatus:
    try:
        seam.check()
    except Exception as err:  # noqa: BLE001 - whatever a changed library raises, the seam changed
        why = str(err) if isinstance(err, SeamChanged) else f"{type(err).__name__}: {err}"
        return SeamStatus(seam.name, seam.switches, False, why)
    return SeamStatus(seam.name, seam.switches, True)


def seam_report(switches: tuple[str, ...] | None = None) -> list[SeamStatus]:
    """The status of every seam, or of the seams of `switches`."""
    return [status_of(seam) for seam in SEAMS if switches is None or set(seam.switches) & set(switches)]


def by_switch(report: list[SeamStatus]) -> dict[str, list[SeamStatus]]:
    """{switch: the statuses of its seams} for every switch, in SWITCHES order."""
    return {switch: [status for status in report if switch in status.switches] for switch in SWITCHES}


def installed_versions() -> dict[str, str | None]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in LIBRARIES}


def check_capabilities(perf: Mapping[str, Any] | Any) -> None:
    """Stop before any model loads when a switch that is on needs a seam this environment's libraries changed."""
    on = tuple(name for name in SWITCHES if perf.get(name))
    changed = [status for status in seam_report(on) if not status.holds]
    if not changed:
        return
    switches = [name for name in on if any(name in status.switches for status in changed)]
    versions = ", ".join(f"{name} {version}" for name, version in installed_versions().items() if version)
    seams = ";\n".join(f"- perf.{', perf.'.join(s for s in status.switches if s in on)}: seam '{status.name}': "
                       f"{status.why}" for status in changed)
    raise RuntimeError(
        f"{', '.join(f'perf.{name}' for name in switches)} need library internals that changed in this environment "
        f"({versions}):\n{seams}.\nSet {', '.join(f'perf.{name}=false' for name in switches)}, or install the "
        f"tested versions with {PINNED_INSTALL} (python -m coz_train.perf.capabilities lists every seam).")


def render(report: list[SeamStatus]) -> str:
    width = max(len(status.name) for status in report) + 2
    lines = [f"{status.name:<{width}}{'holds' if status.holds else 'CHANGED'}  ({', '.join(status.switches)})"
             + ("" if status.holds else f"\n{'':<{width}}{status.why}") for status in report]
    versions = ", ".join(f"{name} {version}" for name, version in installed_versions().items() if version)
    return "\n".join([f"perf switch seams ({versions}):", *lines])


def main(argv: list[str] | None = None) -> int:
    """`python -m coz_train.perf.capabilities [--json PATH]`: every seam's status; exit 1 when one changed."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m coz_train.perf.capabilities",
                                     description="Whether the installed libraries offer what each perf switch needs.")
    parser.add_argument("--json", type=Path, help="also write the statuses as JSON to this file")
    args = parser.parse_args(argv)
    report = seam_report()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"versions": installed_versions(),
                                         "seams": [status.as_dict() for status in report]}, indent=1) + "\n")
    print(render(report))
    return 0 if all(status.holds for status in report) else 1


if __name__ == "__main__":
    sys.exit(main())
