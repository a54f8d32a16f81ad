"""The floors: the least time a phase could take on this device, from the work it must do.

A compute floor is the FLOPs of the tokens that must run over the measured matmul FLOP/s; a decode floor is
the weight bytes each decode step reads over the measured copy bandwidth (docs/performance.md). `step_floors`
gives them for the phases of a whole trainer step.
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


def step_floors(dev: Device, policy: Any, critic: Any | None, work: dict, unique_patches: int, logp_passes: int) -> dict:
    """The floor of each timed phase of a whole trainer step (`coz_train.bench.step_timer`) for its work:
    rollout = decode weight reads + each prompt's prefill once + each image through the tower once; rewards =
    the critic's forward over each group's prefix once (its images and a prompt-length instruction, estimated
    as the policy prompt's length) and every candidate; logps = `logp_passes` forwards and train = a forward
    and backward over each prompt once and every completion. CPU phases have none (0)."""
    lm, vision = lm_params_of(policy), params_of(policy.model.visual)
    tokens = work["distinct_prompt_tokens"] + work["completion_tokens"]
    floors = dict.fromkeys(("data", "prepare", "log", "other", "optimizer"), 0.0)
    floors["rollout"] = (max(0, work["max_completion_tokens"] - 1) * decode_bytes_of(policy) / dev.bandwidth
                         + flops_floor(dev, lm, work["distinct_prompt_tokens"])
                         + flops_floor(dev, vision, unique_patches))
    floors["rewards"] = 0.0 if critic is None else (
        flops_floor(dev, lm_params_of(critic), tokens) + flops_floor(dev, params_of(critic.model.visual), unique_patches))
    floors["logps"] = logp_passes * flops_floor(dev, lm, tokens)
    floors["train"] = flops_floor(dev, lm, tokens, 4.0)
    floors["step"] = sum(floors.values())
    return floors
