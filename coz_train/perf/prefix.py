"""Shared-prefix forward passes for Qwen2-VL / Qwen2.5-VL: run a prefix once, reuse its KV cache.

Many rows of a GRPO batch start with the same tokens: the G completions of one prompt share the
whole prompt (two images and the instruction), and the critic's G conversations for one prompt
share everything up to the candidate text. The helpers here run each distinct prefix once
(`use_cache=True`), repeat its KV cache to the rows that share it, and run only the rows' own
continuations on top.

Two things make this exact for Qwen-VL models:
- M-RoPE positions: after images, text positions are not token indices. Each prefix's positions
  come from the model's own `get_rope_index` (left padding included), and a continuation token j
  sits at `next_position + j`, where `next_position` is one past the prefix's largest position:
  exactly where the full-sequence pass puts it.
- Gradients: the cache is repeated out of place (index select), so in a training pass the G
  continuations' gradients flow back and sum into the one prefix pass.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")


def unwrap(model: Any) -> Any:
    """The transformers model inside DDP / DeepSpeed / PEFT wrappers (the ForConditionalGeneration)."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
    return model


def backbone_of(model: Any) -> Any:
    """The backbone (`Qwen2_5_VLModel` ...) of a ForConditionalGeneration, or the backbone itself."""
    return model if hasattr(model, "get_rope_index") else unwrap(model).model


def check_supported(model: Any, what: str) -> Any:
    """The unwrapped model if it is a Qwen2-VL / Qwen2.5-VL model; else a ValueError naming the switch."""
    inner = unwrap(model)
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES or not hasattr(getattr(inner, "model", None), "get_rope_index"):
        raise ValueError(
            f"{what} needs a Qwen2-VL or Qwen2.5-VL model (M-RoPE positions); this one is '{model_type}'. "
            f"Set {what}=false for this model."
        )
    return inner


@dataclass
class Prefix:
    """A batch of distinct prefixes after one forward pass."""

    states: torch.Tensor  # [P, L, H] hidden states of every prefix position
    cache: Any  # the prefixes' KV cache, P rows
    next_position: torch.Tensor  # [P] M-RoPE position of the first continuation token
    attention_mask: torch.Tensor  # [P, L] the prefixes' (left-padded) attention mask
    output_class: type  # the backbone's output class

    @property
    def hidden(self) -> torch.Tensor:
        """[P, H] last-position hidden state of each prefix."""
        return self.states[:, -1]


def rope_positions(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   mm_token_type_ids: torch.Tensor | None, image_grid_thw: torch.Tensor | None) -> torch.Tensor:
    """M-RoPE position ids [3, B, L] of a left-padded batch, as the model computes them itself."""
    if mm_token_type_ids is None:
        mm_token_type_ids = torch.zeros_like(input_ids)
    positions, _ = backbone_of(model).get_rope_index(
        input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
    )
    return positions


_CHECKPOINTABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> its submodules with the flag


@contextlib.contextmanager
def no_gradient_checkpointing(module: torch.nn.Module) -> Iterator[None]:
    """Checkpointed layers would re-run `cache.update` when recomputed; the shared-prefix passes keep few
    activations anyway (the prompt once per group), so they run without checkpointing. The submodules that carry
    the flag are found once per module (walking every module costs a millisecond per call)."""
    if module not in _CHECKPOINTABLE:
        _CHECKPOINTABLE[module] = [m for m in module.modules() if hasattr(m, "gradient_checkpointing")]
    switched = [m for m in _CHECKPOINTABLE[module] if getattr(m, "gradient_checkpointing", False) is True]
    for m in switched:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in switched:
            m.gradient_checkpointing = True


def run_prefix(inner: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
               mm_token_type_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
               image_grid_thw: torch.Tensor | None = None, position_offset: int = 0) -> Prefix:
    """One pass over P distinct (left-padded) prefixes, keeping the KV cache.

    `position_offset` shifts the continuation positions: only for negative controls in tests.
    """
    from transformers import DynamicCache

    backbone = backbone_of(inner)
    positions = rope_positions(backbone, input_ids, attention_mask, mm_token_type_ids, image_grid_thw)
    out = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        pixel_values=pixel_values,
        image_grid_thw=image_grid_thw,
        use_cache=True,
        cache=DynamicCache(config=inner.config),
    )
    next_position = positions.amax(dim=(0, 2)) + 1 + position_offset
    return Prefix(out.last_hidden_state, out.cache, next_position, attention_mask, type(out))


def repeat_cache(cache: Any, owner: torch.Tensor) -> None:
    """Row r of the cache becomes prefix owner[r]'s (out of place: gradients sum back into the prefix)."""
    for layer in cache.layers:
        layer.batch_select_indices(owner)


def detach_cache(cache: Any) -> None:
    """Cut the gradient path into the prefix pass: only for negative controls in tests."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys.detach(), layer.values.detach()


def run_continuation(inner: Any, prefix: Prefix, owner: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """Run rows' continuations [N, S] on top of their prefixes' repeated cache; returns hidden states [N, S, H].

    `attention_mask` [N, S] masks the continuation's own padding (right padding, or gaps); `start` [N]
    is each row's position offset past its prefix (default 0: the continuation follows the prefix).
    The cache must already hold N rows (`repeat_cache`) and is extended in place.
    """
    steps = torch.arange(input_ids.shape[1], device=input_ids.device)
    first = prefix.next_position[owner] + (0 if start is None else start)
    positions = (first[:, None] + steps[None, :]).unsqueeze(0).expand(3, -1, -1)
    past_mask = prefix.attention_mask[owner] if prefix.cache.get_seq_length() == prefix.attention_mask.shape[1] else None
    if past_mask is None:
        raise ValueError("run_continuation needs the cache of the prefix alone (use decode_step for later tokens).")
    full_mask = torch.cat([past_mask, attention_mask.to(past_mask.dtype)], dim=1)
    out = backbone_of(inner)(input_ids=input_ids, attention_mask=full_mask, position_ids=positions,
                             cache=prefix.cache, use_cache=True)
    return out.last_hidden_state


def images_per_row(inner: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
    """How many images each row holds: its vision-start tokens followed by an image token, among its real tokens
    (a sampled completion may hold a lone vision-start token: that is text, as the model reads it)."""
    config = inner.config
    opens = (input_ids[:, :-1] == config.vision_start_token_id) & (input_ids[:, 1:] == config.image_token_id)
    return (opens & attention_mask[:, :-1].bool()).sum(dim=1).tolist()


def group_owner(keys: list[Any], same: Any = None) -> tuple[torch.Tensor, list[int]]:
    """Rows with equal keys share a prefix: returns owner[r] (index into reps) and reps (first row of each).

    `same(i, j)` optionally confirms that rows i and j really match (e.g. equal pixels) when keys collide.
    """
    reps: list[int] = []
    owner: list[int] = []
    by_key: dict[Any, list[int]] = {}
    for row, key in enumerate(keys):
        match = None
        for g in by_key.get(key, []):
            if same is None or same(reps[g], row):
                match = g
                break
        if match is None:
            match = len(reps)
            reps.append(row)
            by_key.setdefault(key, []).append(match)
        owner.append(match)
    return torch.tensor(owner, dtype=torch.long), reps
