"""LoRA adapters that cross between this project and the official Chain-of-Zoom inference, both ways.

One Qwen2-VL / Qwen2.5-VL checkpoint has two module layouts:
- transformers 4.49 (pinned by the official inference) and the hub's saved weights: the language
  model at `model.layers.N.*`, the vision tower at `visual.*`;
- transformers 5 (this project): `model.language_model.layers.N.*` and `model.visual.*`.
transformers 5 converts base weights on load and writes the 4.49 names on save; PEFT converts
neither way for adapters, so an adapter saved under one layout silently fails to load under the
other (a PEFT warning, then the base model's outputs).

Saving (`make_portable`, run on every folder PEFT writes here): tensor names in the 4.49 layout,
as the released adapter has them (`base_model.model.model.layers.N.<module>.lora_A.weight`);
`target_modules` a regex that both layouts resolve to exactly the modules that carry LoRA (the
language model's projections by default, never the vision tower's MLP, which also has
gate/up/down projections); only the config fields PEFT 0.15.2 knows, unless a newer one is used.

Loading (`load_adapter`, `load_adapter_weights`): the modules to wrap come from the saved tensors,
not from `target_modules` (the released adapter's `^(model).*\\.(q_proj|...)$` also matches the
vision MLP under transformers 5); every saved name is looked up in either layout, and a tensor
that fits no module, or a LoRA weight the file does not set, stops the load naming them.
transformers 5's own `model.load_adapter` renames keys with its internal conversion rules but
still wraps whatever `target_modules` matches, so it would attach empty LoRA to the vision MLP.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
CONFIG_NAME = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
# model types whose transformers-4.49 layout differs from today's: current prefix -> checkpoint prefix
CHECKPOINT_PREFIXES = {
    "qwen2_vl": (("model.language_model.", "model."), ("model.visual.", "visual.")),
    "qwen2_5_vl": (("model.language_model.", "model."), ("model.visual.", "visual.")),
}
# the LoraConfig fields of PEFT 0.15.2 (the official pin); others are written only when they are set
OFFICIAL_LORA_FIELDS = frozenset({
    "alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "corda_config", "eva_config",
    "exclude_modules", "fan_in_fan_out", "inference_mode", "init_lora_weights", "layer_replication",
    "layers_pattern", "layers_to_transform", "loftq_config", "lora_alpha", "lora_bias", "lora_dropout",
    "megatron_config", "megatron_core", "modules_to_save", "peft_type", "r", "rank_pattern", "revision",
    "target_modules", "task_type", "trainable_token_indices", "use_dora", "use_rslora",
})
_LORA_PARAM = re.compile(r"^(?P<module>.+?)\.(?P<param>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
                         r"lora_magnitude_vector)(?:\.(?:weight|bias))?$")
_SHOWN = 8  # names listed in an error


class AdapterError(ValueError):
    """An adapter folder that cannot be applied in full."""


def _rules(model_type: str | None) -> tuple[tuple[str, str], ...]:
    return CHECKPOINT_PREFIXES.get(model_type or "", ())


def checkpoint_name(name: str, model_type: str | None) -> str:
    """A module or tensor name of the loaded model, as the transformers 4.49 layout (and the hub) names it."""
    for current, saved in _rules(model_type):
        if name.startswith(current):
            return saved + name[len(current):]
    return name


def model_names(saved: str, model_type: str | None) -> list[str]:
    """The names a saved module or tensor name may have in a loaded model, the saved name first."""
    names = [saved]
    for current, old in _rules(model_type):
        if saved.startswith(old) and not saved.startswith(current):
            names.append(current + saved[len(old):])
    return names


def _model_type(model: Any) -> str | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "model_type", None)


def check_adapter_folder(path: str | Path | None, key: str) -> Path:
    """The folder, if it holds a PEFT adapter; otherwise an error naming the config key."""
    if not path:
        raise AdapterError(f"{key} is not set: point it at an adapter folder (adapter_config.json + {WEIGHTS_NAME}).")
    folder = Path(path).expanduser()
    config = folder / CONFIG_NAME
    if not config.is_file():
        raise AdapterError(f"{key}='{path}' is not a PEFT adapter folder (no {CONFIG_NAME}).")
    try:
        json.loads(config.read_text())
    except json.JSONDecodeError as err:
        raise AdapterError(f"{key}='{path}': {CONFIG_NAME} is not valid JSON ({err}).") from None
    if not any((folder / name).is_file() for name in (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME)):
        raise AdapterError(f"{key}='{path}' has no adapter weights ({WEIGHTS_NAME}).")
    return folder


def read_adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / WEIGHTS_NAME).is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / WEIGHTS_NAME))
    return torch.load(folder / LEGACY_WEIGHTS_NAME, map_location="cpu", weights_only=True)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > _SHOWN else shown


# ---------------------------------------------------------------------------------------------- save


def _name_regex(name: str, model_type: str | None, fold_indices: bool) -> tuple[str, str]:
    """(parent, leaf) regexes for one checkpoint name, matching it in either layout; indices as `\\d+` if folded."""
    prefix, rest = "", name
    for current, saved in _rules(model_type):
        if name.startswith(saved):
            prefix, rest = f"(?:{re.escape(saved)}|{re.escape(current)})", name[len(saved):]
            break
    parts = [r"\d+" if fold_indices and part.isdigit() else re.escape(part) for part in rest.split(".")]
    return prefix + r"\.".join(parts[:-1]), parts[-1]


def target_pattern(modules: list[str], model_type: str | None, fold_indices: bool = True) -> str:
    """A regex (PEFT full-matches it against module names) for `modules` (checkpoint names) in both layouts,
    the projections of one parent grouped."""
    groups: dict[str, set[str]] = {}
    for name in modules:
        parent, leaf = _name_regex(name, model_type, fold_indices)
        groups.setdefault(parent, set()).add(leaf)
    parts = [f"{parent}\\.(?:{'|'.join(sorted(leaves))})" if parent else f"(?:{'|'.join(sorted(leaves))})"
             for parent, leaves in sorted(groups.items())]
    return "^(?:" + "|".join(parts) + ")$"


def portable_target_modules(lora_modules: list[str], all_modules: list[str], model_type: str | None) -> str:
    """target_modules for the saved config: a pattern that selects exactly the LoRA modules in both layouts
    (layer indices folded when that stays exact, e.g. every layer's projections)."""
    saved = sorted({checkpoint_name(n, model_type) for n in lora_modules})
    current, legacy = set(all_modules), {checkpoint_name(n, model_type) for n in all_modules}
    for fold in (True, False):
        pattern = target_pattern(saved, model_type, fold)
        selected_now = {n for n in current if re.fullmatch(pattern, n)}
        selected_then = {n for n in legacy if re.fullmatch(pattern, n)}
        if selected_now == set(lora_modules) and selected_then == set(saved):
            return pattern
    raise AdapterError(f"no target_modules pattern selects exactly the LoRA modules in both layouts: {_listed(saved)}")


def _write_atomically(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _portable_config(config: dict, target_modules: str, model_type: str | None) -> dict:
    from peft import LoraConfig

    defaults = {f.name: f.default for f in dataclasses.fields(LoraConfig) if f.default is not dataclasses.MISSING}
    out = {}
    for key, value in config.items():
        if key in OFFICIAL_LORA_FIELDS:
            out[key] = value
        elif key in defaults and value == defaults[key] or value in (None, {}, [], False) or key == "peft_version":
            continue  # unset in this PEFT and unknown to PEFT 0.15.2
        else:
            log.warning("adapter_config.json: '%s'=%r is set; PEFT 0.15.2 (the official inference) ignores it", key, value)
            out[key] = value
    out["target_modules"] = target_modules
    if config.get("modules_to_save"):
        # PEFT matches modules_to_save by suffix: the checkpoint name is a suffix of the current one
        out["modules_to_save"] = [checkpoint_name(n, model_type) for n in config["modules_to_save"]]
    return out


def _adapter_folders(folder: Path, adapter_names: list[str]) -> dict[str, Path]:
    """Where PEFT's save_pretrained put each adapter: `default` in the folder, the others in sub-folders."""
    return {name: folder if name == "default" else folder / name for name in adapter_names}


def make_portable(folder: str | Path, model: Any) -> None:
    """Rewrite the adapters PEFT just saved in `folder` (tensor names, target_modules, config fields) so that
    they load in the official inference and here alike. `model` is the PeftModel that was saved."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import save_file

    model_type = _model_type(model)
    base = model.get_base_model()
    all_modules = [name for name, _ in base.named_modules() if name]
    for adapter_name, path in _adapter_folders(Path(folder), list(model.peft_config)).items():
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            continue
        tensors = read_adapter_tensors(path)
        renamed = {PEFT_PREFIX + checkpoint_name(k[len(PEFT_PREFIX):], model_type) if k.startswith(PEFT_PREFIX) else k: v
                   for k, v in tensors.items()}
        lora_modules = sorted(name for name, module in base.named_modules()
                              if isinstance(module, BaseTunerLayer) and adapter_name in getattr(module, "lora_A", {}))
        config = json.loads((path / CONFIG_NAME).read_text())
        config = _portable_config(config, portable_target_modules(lora_modules, all_modules, model_type), model_type)
        _write_atomically(path / WEIGHTS_NAME,
                          lambda tmp, t=renamed: save_file({k: v.contiguous() for k, v in t.items()}, str(tmp),
                                                           metadata={"format": "pt"}))
        _write_atomically(path / CONFIG_NAME, lambda tmp, c=config: tmp.write_text(json.dumps(c, indent=2, sort_keys=True)))


# ---------------------------------------------------------------------------------------------- load


def _to_model_keys(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                   model_type: str | None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Saved tensors under the loaded model's key names; and the saved names that fit no expected key."""
    converted, unfit = {}, []
    for key, tensor in saved.items():
        rest = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        found = next((PEFT_PREFIX + name for name in model_names(rest, model_type) if PEFT_PREFIX + name in expected),
                     None)
        if found is None:
            unfit.append(key)
        else:
            converted[found] = tensor
    return converted, unfit


def load_adapter_weights(model: Any, folder: str | Path, adapter_name: str = "default", key: str = "adapter",
                         tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Load the adapter saved in `folder` into `model`'s existing adapter `adapter_name`, in full or not at all
    (`tensors`: the folder's tensors when the caller has already read them)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    folder = check_adapter_folder(folder, key)
    model_type = _model_type(model)
    expected = get_peft_model_state_dict(model, adapter_name=adapter_name)  # the keys a save would write
    saved = tensors if tensors is not None else read_adapter_tensors(folder)
    converted, unfit = _to_model_keys(saved, expected, model_type)
    if unfit:
        raise AdapterError(f"{key}='{folder}': {len(unfit)} saved tensors fit no module of the policy "
                           f"({type(model.get_base_model()).__name__}): {_listed(sorted(unfit))}. Is it an adapter of "
                           "this base model?")
    unset = sorted(set(expected) - set(converted))
    if unset:
        raise AdapterError(f"{key}='{folder}' does not set {len(unset)} weights of the adapter, which would stay at "
                           f"their initial values: {_listed(unset)}.")
    wrong = [f"{k} {tuple(converted[k].shape)} != {tuple(expected[k].shape)}" for k in sorted(converted)
             if converted[k].shape != expected[k].shape]
    if wrong:
        raise AdapterError(f"{key}='{folder}': {len(wrong)} saved tensors have the wrong shape (another rank or base "
                           f"model?): {_listed(wrong)}.")
    result = set_peft_model_state_dict(model, converted, adapter_name=adapter_name)
    missed = [k for k in getattr(result, "missing_keys", []) if f".{adapter_name}." in k and "lora_" in k]
    if missed or getattr(result, "unexpected_keys", []):
        raise AdapterError(f"{key}='{folder}': PEFT left {_listed(missed or result.unexpected_keys)} unloaded.")
    log.info("Adapter %s: %d tensors loaded into '%s'", folder, len(converted), adapter_name)


def saved_lora_modules(tensors: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(modules carrying LoRA, other tensor names) of a saved adapter, names without PEFT's prefix."""
    modules, others = set(), []
    for key in tensors:
        rest = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        match = _LORA_PARAM.match(rest)
        if match:
            modules.add(match.group("module"))
        else:
            others.append(rest)
    return sorted(modules), others


def load_adapter(model: Any, folder: str | Path, is_trainable: bool, key: str = "adapter") -> Any:
    """A PeftModel over `model` with the adapter in `folder` (either layout), applied in full.

    The LoRA goes on exactly the modules the saved tensors name, found in the loaded model's layout."""
    from peft import LoraConfig, PeftConfig, get_peft_model

    folder = check_adapter_folder(folder, key)
    config = PeftConfig.from_pretrained(str(folder))
    if not isinstance(config, LoraConfig):
        raise AdapterError(f"{key}='{folder}' is a {type(config).__name__} adapter; only LoRA adapters are supported.")
    model_type = getattr(model.config, "model_type", None)
    present = {name for name, _ in model.named_modules()}
    tensors = read_adapter_tensors(folder)
    saved_modules, _ = saved_lora_modules(tensors)
    targets, unfit = [], []
    for saved in saved_modules:
        found = next((name for name in model_names(saved, model_type) if name in present), None)
        if found is None:
            unfit.append(saved)
        else:
            targets.append(found)
    if unfit:
        raise AdapterError(f"{key}='{folder}': {len(unfit)} LoRA modules of the adapter are not in the policy "
                           f"({type(model).__name__}): {_listed(unfit)}. Is it an adapter of this base model?")
    if not targets:
        raise AdapterError(f"{key}='{folder}' holds no LoRA weights ({WEIGHTS_NAME}).")
    config.target_modules = targets
    config.modules_to_save = [next((n for n in model_names(m, model_type) if n in present), m)
                              for m in config.modules_to_save or []] or None
    config.inference_mode = not is_trainable
    peft_model = get_peft_model(model, config)
    load_adapter_weights(peft_model, folder, "default", key, tensors)
    if not is_trainable:
        peft_model.eval()
    return peft_model
