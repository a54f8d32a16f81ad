"""Rollouts with each group's prompt prefilled once (`perf.rollout_prefix`).

TRL generates on the B x G expanded prompts, so the prefill runs every prompt G times. Installed as the
model's `rollout_prefix` (`coz_train.perf.model`: a model loaded with `load_vlm`), the model's `generate` first runs each distinct prompt once, all but its last token
(`coz_train.perf.prefix.run_prefix`), repeats that KV cache to the rows, sets the rows' M-RoPE
deltas, and hands transformers' `generate` the full prompts with that cache: generation then
starts from the last prompt token, as a continued generation does, and samples exactly as
before (same logits up to float rounding, same random draws).

With a static cache (`cache_implementation="static"`, as `perf.compiled_decode` sets it), the
repeated prefix is written into a static cache kept across calls (fixed storage, so compiled decode
steps and CUDA graphs are reused), its length rounded up to a multiple of STATIC_BUCKET tokens.

It steps aside (plain `generate`) for calls it does not cover: no images, a cache already given,
`num_return_sequences` > 1, or a cache implementation other than the default and static ones.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from coz_train.perf.group_prefix import per_sample_images
from coz_train.perf.model import switchable
from coz_train.perf.prefix import group_owner, images_per_row, repeat_cache, run_prefix

STATIC_BUCKET = 128  # static cache lengths are rounded up to this: fewer sizes, fewer compiled graphs


class RolloutPrefix:
    def __init__(self, inner: Any, original: Any):
        self.inner, self.original = inner, original
        self.enabled = True
        self.calls = 0  # generations that went through the shared prefill
        self.static_cache: Any = None  # kept across calls when generating with a static cache

    def option(self, kwargs: dict, name: str) -> Any:
        """A generation option as `generate` resolves it: the call's keyword, else the given config's, else
        (where that is unset) the model's own generation config."""
        given = kwargs.get("generation_config")
        for value in (kwargs.get(name), getattr(given, name, None)):
            if value is not None:
                return value
        return getattr(self.inner.generation_config, name, None)

    def covers(self, kwargs: dict) -> bool:
        cache_implementation = self.option(kwargs, "cache_implementation")
        static_ok = cache_implementation != "static" or self.option(kwargs, "max_new_tokens") is not None
        return (self.enabled and kwargs.get("input_ids") is not None and kwargs.get("attention_mask") is not None
                and kwargs.get("pixel_values") is not None and kwargs.get("image_grid_thw") is not None
                and kwargs.get("cache") is None and kwargs.get("past_key_values") is None
                and (self.option(kwargs, "num_return_sequences") or 1) == 1
                and cache_implementation in (None, "dynamic", "static") and static_ok
                and kwargs["input_ids"].shape[1] > 1)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        if args or not self.covers(kwargs):
            return self.original(*args, **kwargs)
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        mm = kwargs.get("mm_token_type_ids")
        n, length = ids.shape
        counts = images_per_row(self.inner, ids, mask)
        if sum(counts) != kwargs["image_grid_thw"].shape[0]:  # images the tokens do not account for
            return self.original(*args, **kwargs)
        pixels, grids = per_sample_images(kwargs["pixel_values"], kwargs["image_grid_thw"], counts, n)
        real = [tuple(row[m.bool()].tolist()) for row, m in zip(ids.cpu(), mask.cpu(), strict=True)]

        def same(i: int, j: int) -> bool:
            return torch.equal(grids[i], grids[j]) and torch.equal(pixels[i], pixels[j])

        owner, reps = group_owner(real, same)
        owner = owner.to(ids.device)
        head = length - 1  # the last prompt token is left to generate's first forward
        prefix = run_prefix(
            self.inner, ids[reps, :head], mask[reps, :head],
            mm_token_type_ids=None if mm is None else mm[reps, :head],
            pixel_values=torch.cat([pixels[r] for r in reps]), image_grid_thw=torch.cat([grids[r] for r in reps]),
        )
        repeat_cache(prefix.cache, owner)
        # the full prompt's rope delta: its last token sits at the prefix's next position
        self.inner.model.rope_deltas = (prefix.next_position[owner] + 1 - mask.sum(dim=1)).unsqueeze(1)
        cache = prefix.cache
        if self.option(kwargs, "cache_implementation") == "static":
            # as generate sizes its own: the last sampled token is never fed back
            cache = self.static_copy(cache, length + self.option(kwargs, "max_new_tokens") - 1, kwargs)
        # the cache is given: generate refuses a cache implementation beside it, from any of its sources
        rest = {k: v for k, v in kwargs.items()
                if k not in ("pixel_values", "image_grid_thw", "cache_implementation", "max_cache_len")}
        if kwargs.get("generation_config") is not None:
            rest["generation_config"] = copy.deepcopy(kwargs["generation_config"])
            rest["generation_config"].cache_implementation = None
        self.calls += 1
        own = self.inner.generation_config
        kept, own.cache_implementation = own.cache_implementation, None
        try:
            return self.original(**rest, cache=cache)
        finally:
            own.cache_implementation = kept

    def static_copy(self, cache: Any, needed: int, kwargs: dict) -> Any:
        """The repeated prefix cache written into the kept static cache. A new one is made when the batch,
        dtype or device changed or it is too short, sized up to a multiple of STATIC_BUCKET (or to
        `max_cache_len` if larger), so prompts a few tokens longer do not compile the decode step again."""
        from transformers import StaticCache

        first = cache.layers[0]
        rows, like = first.keys.shape[0], first.keys
        size = max(-(-needed // STATIC_BUCKET) * STATIC_BUCKET, self.option(kwargs, "max_cache_len") or 0)
        kept = self.static_cache
        layer = kept.layers[0] if kept is not None else None
        if (layer is None or not layer.is_initialized or layer.batch_size != rows or layer.max_cache_len < needed
                or layer.keys.dtype != like.dtype or layer.keys.device != like.device):
            kept = self.static_cache = StaticCache(config=self.inner.config, max_cache_len=size)
        else:
            kept.reset()
        for source, target in zip(cache.layers, kept.layers, strict=True):
            target.update(source.keys, source.values)
        return kept


def install_rollout_prefix(model: Any) -> RolloutPrefix:
    """Set the shared prefill as the model's `rollout_prefix` (the one there, if set); returns it (`.enabled`)."""
    inner, _ = switchable(model, "perf.rollout_prefix")
    if inner.rollout_prefix is None:
        inner.rollout_prefix = RolloutPrefix(inner, inner.library_generate)
    return inner.rollout_prefix
