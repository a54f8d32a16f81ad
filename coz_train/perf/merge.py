"""LoRA merged into the base weights for rollouts (`perf.merge_adapters_for_generation`), and base
weights kept bit for bit across any merge and unmerge."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def lora_layers(model: Any) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def kept_base_weights(model: Any) -> Iterator[None]:
    """The base weights under every LoRA layer copied before the block and written back after it.

    PEFT's unmerge subtracts the merged update again, which in bf16 does not give the old weights
    back; anything that merges and unmerges (our rollouts, TRL's vLLM weight sync) runs inside this.
    Weights that ZeRO-3 shards (empty on this rank) are left to their owner.
    """
    weights = [layer.get_base_layer().weight for layer in lora_layers(model)]
    saved = [(w, w.detach().clone()) for w in weights if w.numel() > 0]
    try:
        yield
    finally:
        with torch.no_grad():
            for weight, copy in saved:
                weight.copy_(copy)


@contextlib.contextmanager
def merged_adapters(model: Any) -> Iterator[None]:
    """LoRA merged into the base weights inside the block; the base weights restored bit for bit after."""
    layers = [m for m in lora_layers(model) if not m.merged and m.active_adapters]
    if not layers:
        yield
        return
    with kept_base_weights(model):
        for layer in layers:
            layer.merge(adapter_names=list(layer.active_adapters))
        try:
            yield
        finally:
            for layer in layers:
                layer.unmerge()
