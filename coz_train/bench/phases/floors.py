"""The floors: the least time a phase could take on this device, from the work it must do.

A compute floor is the FLOPs of the tokens that must run over the measured matmul FLOP/s; a decode
floor is the weight bytes each decode step reads over the measured copy bandwidth (docs/performance.md).
"""

from __future__ import annotations

from typing import Any

import torch

from coz_train.bench.phases.timing import Device


def params_of(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def lm_params_of(inner: Any) -> int:
    """The language model's weights that run per token (the output head counted once when tied)."""
    return params_of(inner.model.language_model) + (
        0 if inner.config.tie_word_embeddings else inner.lm_head.weight.numel())


def decode_bytes_of(inner: Any) -> int:
    """Weight bytes one decode step reads: the language model's layers and the output head (not the embeddings)."""
    layers = sum(p.numel() * p.element_size() for n, p in inner.model.language_model.named_parameters()
                 if "embed_tokens" not in n)
    return layers + inner.lm_head.weight.numel() * inner.lm_head.weight.element_size()


def flops_floor(dev: Device, params: int, tokens: int, passes: float = 2.0) -> float:
    """`passes` x params FLOPs per token: 2 for a forward, 4 with the backward included."""
    return passes * params * tokens / dev.peak_flops
