"""Group-shared prompt in the policy's log-prob and training passes (`perf.group_prefix`).

The G completions of a GRPO group share one prompt (system text + two images, ~700 tokens for the
paper's 504-px crops) and add ~32 tokens each. TRL runs every row in full. Here each distinct
prompt in a micro-batch runs once (with gradients when training), its KV cache is repeated to the
rows that share it (out of place, so their gradients sum back into the one prompt pass), and only
the completions run on top. The first completion token's log-prob comes from the prompt's last
position; completion token j sits at M-RoPE position `next_position + j`.

Rows are grouped by content (equal prompt tokens and equal pixels), not by their order, so any
batch layout is correct; `perf.group_batches` makes micro-batches hold whole groups so that the
sharing pays in the training pass too. The shared passes run without gradient checkpointing (a
checkpointed layer would write the KV cache again when recomputed); a micro-batch with nothing to
share takes one ordinary pass over the full sequences, checkpointed as configured.

`install_group_prefix(model)` adds a keyword to the model's forward: `model(..., coz_group_prefix=
spec)` returns per-token `log_probs` and `entropy` of the last `spec["logits_to_keep"]` tokens,
as TRL's fused LM head does (temperature applied, padding positions 0). Called through the
DDP / DeepSpeed / PEFT wrappers, so gradient synchronisation and adapters work as usual.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput

from coz_train.perf.prefix import (
    check_supported,
    detach_cache,
    group_owner,
    images_per_row,
    no_gradient_checkpointing,
    repeat_cache,
    run_continuation,
    run_prefix,
)

KWARG = "coz_group_prefix"


@dataclass
class GroupPrefixOutput(ModelOutput):
    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


def per_sample_images(pixel_values: torch.Tensor | None, image_grid_thw: torch.Tensor | None,
                      num_images: list[int], n: int) -> tuple[list, list]:
    """Each row's pixel rows and grid rows (None when the batch has no images)."""
    if pixel_values is None or image_grid_thw is None:
        return [None] * n, [None] * n
    if len(num_images) != n or sum(num_images) != image_grid_thw.shape[0]:
        raise ValueError(f"{KWARG}: {image_grid_thw.shape[0]} images do not split into rows holding {num_images}.")
    grids = list(torch.split(image_grid_thw, list(num_images)))
    rows = [int(g.prod(-1).sum()) for g in grids]
    return list(torch.split(pixel_values, rows)), grids


def token_logps(inner: Any, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                cast_lm_head_to_fp32: bool, compute_entropy: bool,
                entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of `targets` and (optionally) entropies at temperature, as TRL's fused LM head computes them.
    Without `entropy_grad` the entropy is computed off the graph (it only feeds metrics and masks then)."""
    head = inner.get_output_embeddings()
    if cast_lm_head_to_fp32:
        if head.weight.numel() == 0:
            raise ValueError("perf.group_prefix with grpo.cast_lm_head_to_fp32 needs the LM head's full weight, which "
                             "ZeRO-3 shards: set one of them to false.")
        with torch.autocast(hidden.device.type, enabled=False):
            bias = None if head.bias is None else head.bias.float()
            logits = torch.nn.functional.linear(hidden.float(), head.weight.float(), bias)
    else:
        logits = head(hidden).float()
    logits = logits / temperature
    log_softmax = torch.log_softmax(logits, dim=-1)
    logps = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if compute_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            source = log_softmax if entropy_grad else log_softmax.detach()
            entropy = -(source.exp() * source).sum(-1)
    return logps, entropy


def group_prefix_forward(inner: Any, spec: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         pixel_values: torch.Tensor | None = None, image_grid_thw: torch.Tensor | None = None,
                         mm_token_type_ids: torch.Tensor | None = None, **_: Any) -> GroupPrefixOutput:
    keep = int(spec["logits_to_keep"])
    n, length = input_ids.shape
    prompt_len = length - keep
    if prompt_len < 1 or keep < 1:
        raise ValueError(f"{KWARG}: logits_to_keep={keep} must leave a prompt in sequences of length {length}.")
    prompt_ids, prompt_mask = input_ids[:, :prompt_len], attention_mask[:, :prompt_len]
    num_images = spec.get("num_images") or images_per_row(inner, prompt_ids, prompt_mask)
    pixels, grids = per_sample_images(pixel_values, image_grid_thw, list(num_images), n)
    options = (float(spec.get("temperature", 1.0)), bool(spec.get("cast_lm_head_to_fp32", False)),
               bool(spec.get("compute_entropy")), bool(spec.get("entropy_grad", True)))

    real = [row[mask.bool()].tolist() for row, mask in zip(prompt_ids.cpu(), prompt_mask.cpu(), strict=True)]

    def same(i: int, j: int) -> bool:
        if pixels[i] is None or pixels[j] is None:
            return pixels[i] is None and pixels[j] is None
        return torch.equal(grids[i], grids[j]) and torch.equal(pixels[i], pixels[j])

    owner, reps = group_owner([tuple(r) for r in real], same)
    if len(reps) == n and not spec.get("position_offset") and not spec.get("detach_cache"):
        # nothing to share: the full sequences in one ordinary pass, gradient checkpointing as configured
        out = inner.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                          image_grid_thw=image_grid_thw, mm_token_type_ids=mm_token_type_ids)
        hidden = out.last_hidden_state[:, prompt_len - 1 : -1]
        return _output(inner, hidden, input_ids[:, prompt_len:], attention_mask[:, prompt_len:], options)
    owner = owner.to(input_ids.device)
    rep_pixels = [pixels[r] for r in reps if pixels[r] is not None]
    with no_gradient_checkpointing(inner):
        prefix = run_prefix(
            inner,
            prompt_ids[reps],
            prompt_mask[reps],
            mm_token_type_ids=None if mm_token_type_ids is None else mm_token_type_ids[reps, :prompt_len],
            pixel_values=torch.cat(rep_pixels) if rep_pixels else None,
            image_grid_thw=torch.cat([grids[r] for r in reps]) if rep_pixels else None,
            position_offset=int(spec.get("position_offset", 0)),
        )
        if spec.get("detach_cache"):
            detach_cache(prefix.cache)
        hidden = prefix.hidden[owner][:, None]
        if keep > 1:
            repeat_cache(prefix.cache, owner)
            rest = run_continuation(inner, prefix, owner, input_ids[:, prompt_len:-1], attention_mask[:, prompt_len:-1])
            hidden = torch.cat([hidden, rest], dim=1)
    return _output(inner, hidden, input_ids[:, prompt_len:], attention_mask[:, prompt_len:], options)


def _output(inner: Any, hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
            options: tuple) -> GroupPrefixOutput:
    logps, entropy = token_logps(inner, hidden, targets, *options)
    mask = mask.to(logps.dtype)
    return GroupPrefixOutput(log_probs=logps * mask, entropy=None if entropy is None else entropy * mask)


def install_group_prefix(model: Any) -> Any:
    """Let `model(..., coz_group_prefix=spec)` run the group-shared path; returns the patched inner model."""
    inner = check_supported(model, "perf.group_prefix")
    if getattr(inner.forward, "_coz_group_prefix", False):
        return inner
    text_config = inner.config.get_text_config()
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(text_config, attr, None) not in (None, 1.0):
            raise ValueError(f"perf.group_prefix: {attr} in the model config is not supported; set perf.group_prefix=false.")
    original = inner.forward

    @functools.wraps(type(inner).forward)
    def forward(self: Any, *args: Any, coz_group_prefix: dict | None = None, **kwargs: Any) -> Any:
        if coz_group_prefix is None:
            return original(*args, **kwargs)
        if args:
            raise TypeError(f"{KWARG}: pass the model inputs as keywords.")
        return group_prefix_forward(self, coz_group_prefix, **kwargs)

    forward._coz_group_prefix = True  # type: ignore[attr-defined]
    inner.forward = types.MethodType(forward, inner)
    return inner
