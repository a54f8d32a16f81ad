"""Group-shared prompt in the policy's log-prob and training passes (`perf.group_prefix`).

The G completions of a GRPO group share one prompt (system text + two images, ~700 tokens for the
paper's 504-px crops) and add ~32 tokens each. TRL's log-prob and training passes send every row's
full sequence through the model: its fused LM head (`trl.trainer.utils.add_fused_lm_head`) runs the
backbone (`model.model`) on input_ids, attention_mask, pixel_values, image_grid_thw and
mm_token_type_ids, then the LM head on the completion positions. `SharedPrompt` is the backbone's
`forward` for such calls (installed as `backbone.shared_prompt`, `coz_train.perf.model`): it finds
the rows that share a prefix, runs each distinct prefix once (with gradients when training), repeats
its hidden states and KV cache to the rows that share it (out of place, so their gradients sum back
into the one prefix pass), runs only the rows' own tokens on top, and returns the backbone's
`last_hidden_state` for every position: the library's own output up to float rounding.

Rows are grouped by content, not by order: rows whose images are equal (grids and pixels) and whose
tokens agree up to their last image token form a group; the shared length is the longest prefix
every group's rows agree on (tokens and mask), at least up to the last image token of every row, so
the rows' own tokens are text: token j past the prefix sits at M-RoPE position `next_position + j`.
Hidden states past a row's last real token (right padding) are not the library's (TRL masks them).
Any batch layout is correct; `perf.group_batches` makes micro-batches hold whole groups, so the
sharing pays in the training pass too. The shared passes run without gradient checkpointing (a
checkpointed layer would write the KV cache again when recomputed); a call with nothing to share,
or one it does not cover (a cache, position ids, embeddings, use_cache, attention or hidden-state
outputs, no images), is the library's own forward, checkpointed as configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from coz_train.perf.prefix import (
    detach_cache,
    group_owner,
    images_per_row,
    no_gradient_checkpointing,
    repeat_cache,
    run_continuation,
    run_prefix,
)

# keywords the shared path reads; any other keyword with a value makes the call the library's own
_COVERED = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids", "use_cache",
            "return_dict"}


def per_sample_images(pixel_values: torch.Tensor | None, image_grid_thw: torch.Tensor | None,
                      num_images: list[int], n: int) -> tuple[list, list]:
    """Each row's pixel rows and grid rows (None when the batch has no images)."""
    if pixel_values is None or image_grid_thw is None:
        return [None] * n, [None] * n
    if len(num_images) != n or sum(num_images) != image_grid_thw.shape[0]:
        raise ValueError(f"perf.group_prefix: {image_grid_thw.shape[0]} images do not split into rows holding "
                         f"{num_images}.")
    grids = list(torch.split(image_grid_thw, list(num_images)))
    rows = [int(g.prod(-1).sum()) for g in grids]
    return list(torch.split(pixel_values, rows)), grids


@dataclass
class Plan:
    """How one call shares: rows' owner prefix, the representative rows, the shared length."""

    owner: torch.Tensor
    reps: list[int]
    length: int
    pixels: list
    grids: list


@dataclass
class SharedPrompt:
    """The backbone's forward for full sequences whose rows share prefixes.

    `position_offset` and `detach_cache` break it on purpose: negative controls for the tests only.
    """

    position_offset: int = 0
    detach_cache: bool = False
    calls: int = 0  # full-sequence calls that shared a prefix
    plain_calls: int = 0  # full-sequence calls it left to the library's forward
    # (start, end): the positions whose hidden states the caller scores, while `coz_train.perf.trl_seams.
    # CompletionScoring` asks for them; the output then holds those positions only
    span: tuple[int, int] | None = None

    def __call__(self, backbone: Any, kwargs: dict) -> Any:
        if kwargs.get("use_cache") or kwargs.get("cache") is not None:
            return backbone.library_forward(**kwargs)  # generation, and the shared passes' own steps
        plan = self.plan(backbone, kwargs)
        if plan is not None:
            self.calls += 1
            return self.run(backbone, plan, kwargs)
        self.plain_calls += 1
        out = backbone.library_forward(**kwargs)
        if self.span is not None:
            out.last_hidden_state = out.last_hidden_state[:, self.span[0] : self.span[1]]
        return out

    def plan(self, backbone: Any, kwargs: dict) -> Plan | None:
        if any(v is not None and v is not False for k, v in kwargs.items() if k not in _COVERED):
            return None
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        pixel_values, grid = kwargs.get("pixel_values"), kwargs.get("image_grid_thw")
        if ids is None or mask is None or pixel_values is None or grid is None or ids.shape[0] < 2:
            return None
        n, length = ids.shape
        counts = images_per_row(backbone, ids, mask)
        if sum(counts) != grid.shape[0]:
            return None
        pixels, grids = per_sample_images(pixel_values, grid, counts, n)
        ends = image_ends(backbone, ids)  # one past each row's last image token
        host = torch.stack([ids, mask.to(ids.dtype)]).cpu().numpy()  # [2, n, length]: tokens and mask
        keys = [host[:, r, : ends[r]].tobytes() for r in range(n)]

        def same(i: int, j: int) -> bool:
            return torch.equal(grids[i], grids[j]) and torch.equal(pixels[i], pixels[j])

        owner, reps = group_owner(keys, same)
        if len(reps) == n and not (self.position_offset or self.detach_cache):
            return None  # nothing to share
        shared = length
        groups = owner.tolist()
        for g, first in enumerate(reps):
            rows = [r for r, o in enumerate(groups) if o == g and r != first]
            if rows:  # the positions where every row of the group agrees with its first, up to the first that does not
                agree = (host[:, rows] == host[:, first : first + 1]).all(axis=(0, 1))
                shared = min(shared, int(agree.argmin()) if not agree.all() else length)
        # at least the last token runs on top of the prefix: every call makes the same two passes whatever the rows
        # hold (under ZeRO-3 each pass gathers the weights on every rank, so the ranks' passes must match)
        shared = min(shared, length - 1)
        if shared < max(ends) or shared < 1:
            return None  # an image past the shared part: the rows' own tokens would not be text
        return Plan(owner.to(ids.device), reps, shared, pixels, grids)

    def run(self, backbone: Any, plan: Plan, kwargs: dict) -> Any:
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        mm = kwargs.get("mm_token_type_ids")
        reps, shared = plan.reps, plan.length
        with no_gradient_checkpointing(backbone):
            prefix = run_prefix(
                backbone,
                ids[reps, :shared],
                mask[reps, :shared],
                mm_token_type_ids=None if mm is None else mm[reps, :shared],
                pixel_values=torch.cat([plan.pixels[r] for r in reps]),
                image_grid_thw=torch.cat([plan.grids[r] for r in reps]),
                position_offset=self.position_offset,
            )
            if self.detach_cache:
                detach_cache(prefix.cache)
            start, end = self.span or (0, ids.shape[1])
            parts = [prefix.states[:, start : min(shared, end)][plan.owner]] if start < shared else []
            if shared < ids.shape[1]:  # the rows' own tokens (their hidden states past `end` are not asked for)
                repeat_cache(prefix.cache, plan.owner)
                rest = run_continuation(backbone, prefix, plan.owner, ids[:, shared:], mask[:, shared:])
                if end > shared:
                    parts.append(rest[:, max(0, start - shared) : end - shared])
            hidden = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return prefix.output_class(last_hidden_state=hidden)


def image_ends(backbone: Any, input_ids: torch.Tensor) -> list[int]:
    """Per row, one past its last image token (0 for a row without images). Not the last vision-end token: a
    sampled completion may hold one, which is text to the model."""
    hits = input_ids == backbone.config.image_token_id
    positions = torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device)
    return (hits * positions).amax(dim=1).tolist()


def install_group_prefix(model: Any, shared: SharedPrompt | None = None) -> SharedPrompt:
    """Set the shared-prompt forward as the backbone's `shared_prompt` (the one there, if set); returns it."""
    from coz_train.perf.model import switchable

    _, backbone = switchable(model, "perf.group_prefix")
    if backbone.shared_prompt is None:
        backbone.shared_prompt = shared or SharedPrompt()
    return backbone.shared_prompt
