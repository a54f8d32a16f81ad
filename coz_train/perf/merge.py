"""LoRA merged into the base weights for rollouts (`perf.merge_adapters_for_generation`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


@contextlib.contextmanager
def merged_adapters(model: Any) -> Iterator[None]:
    """LoRA merged into the base weights inside the block; the base weights restored bit for bit after.

    Unmerging subtracts the update again, which in bf16 does not give the old weights back, so the
    touched base weights are copied before the merge and written back afterwards.
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and not m.merged and m.active_adapters]
    if not layers:
        yield
        return
    saved = [(layer.get_base_layer().weight, layer.get_base_layer().weight.detach().clone()) for layer in layers]
    for layer in layers:
        layer.merge(adapter_names=list(layer.active_adapters))
    try:
        yield
    finally:
        for layer in layers:
            layer.unmerge()
        with torch.no_grad():
            for weight, copy in saved:
                weight.copy_(copy)
