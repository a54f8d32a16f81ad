"""The paper's LoRA adapter and the vision freeze switches, as one PEFT config.

The released CoZ adapter: r=8, alpha=32, dropout 0.05, no bias, on the language model's
q/k/v/o/gate/up/down projections; the vision tower is frozen. PEFT freezes every base weight, so
"unfreezing" the vision tower or the projector means training them fully as `modules_to_save`
(saved beside the adapter). Saved adapters are rewritten into the official inference's module
layout and loaded back in full by `coz_train.policy.adapters`.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig

# Where image-text-to-text models keep their vision tower and their projector (first match wins).
VISION_TOWER_NAMES = ("model.visual", "model.vision_tower", "model.vision_model", "visual", "vision_tower")
PROJECTOR_NAMES = ("merger", "multi_modal_projector", "mlp1", "connector")


def _find(model: Any, names: tuple[str, ...]) -> tuple[str, Any] | tuple[None, None]:
    modules = dict(model.named_modules())
    for name in names:
        if name in modules:
            return name, modules[name]
    return None, None


def trainable_vision_modules(model: Any, freeze_vision_tower: bool, freeze_projector: bool) -> list[str]:
    """Full names of the vision modules to train fully (PEFT `modules_to_save`)."""
    if freeze_vision_tower and freeze_projector:
        return []
    tower_name, tower = _find(model, VISION_TOWER_NAMES)
    if tower is None:
        raise ValueError(
            f"policy.freeze_vision_tower/freeze_projector=false: no vision tower found in {type(model).__name__} "
            f"(looked for {VISION_TOWER_NAMES})."
        )
    projector = None
    for child_name, _child in tower.named_children():
        if child_name in PROJECTOR_NAMES:
            projector = f"{tower_name}.{child_name}"
    if projector is None:
        name, _ = _find(model, tuple(f"model.{n}" for n in PROJECTOR_NAMES) + PROJECTOR_NAMES)
        projector = name
    if not freeze_projector and projector is None:
        raise ValueError(f"policy.freeze_projector=false: no projector found in {type(model).__name__}.")
    selected = []
    if not freeze_vision_tower:
        for child_name, child in tower.named_children():
            full = f"{tower_name}.{child_name}"
            if full == projector or not any(True for _ in child.parameters()):
                continue
            # PEFT wraps single modules, not containers: list a ModuleList's members one by one
            children = list(child.named_children()) if isinstance(child, torch.nn.ModuleList) else [(None, child)]
            selected += [full if sub is None else f"{full}.{sub}" for sub, _ in children]
    if not freeze_projector:
        selected.append(projector)
    return selected


def lora_config(policy_cfg: Any, model: Any) -> LoraConfig:
    lora = policy_cfg.lora
    modules_to_save = trainable_vision_modules(model, policy_cfg.freeze_vision_tower, policy_cfg.freeze_projector)
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        bias=lora.bias,
        target_modules=lora.target_modules,
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )
