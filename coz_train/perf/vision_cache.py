"""Frozen-vision feature cache: each distinct image goes through the vision tower once.

A GRPO step sends the same images through the policy's vision tower many times: rollouts on the
G expanded copies of each prompt, the reference/old log-prob pass and the training pass each
encode every row's two images. With the vision tower and its merger frozen (the paper's LoRA
touches the language model only), an image's embedding never changes, so the cache computes it
once and hands out the stored tensor afterwards: exact by construction.

Lookups are by content: an image's key is its row count and a few of its pixel values at fixed
relative offsets (read in one gather), and a key match is confirmed with an exact `torch.equal`
on all its pixels before the stored embedding is used. Embeddings are kept across
steps up to `max_images` (least recently used dropped first).

With pixel handles (`perf.pixel_handles`: `pixel_source` set to the processor's `CachedImageProcessor` in
handle mode) the `pixel_values` it gets are `PixelHandles`, one handle per pixel row (see `coz_train.perf.image_cache`):
an image's key is its handle, which names one stored, preprocessed image, and a miss runs the tower on the
pixels the source holds for it. Nothing is compared pixel by pixel, and no pixel rows reach the device but
those of the images the tower runs on.

`install_vision_cache(model, max_images)` sets the cache as the backbone's `vision_cache` (a model loaded
with `load_vlm`: `coz_train.perf.model`), whose `get_image_features` then asks it; it refuses a
model whose vision tower or merger has trainable weights (`policy.freeze_vision_tower=false`,
`policy.freeze_projector=false`, or a LoRA that targets vision modules).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from coz_train.perf.image_cache import PixelHandles
from coz_train.perf.model import switchable


class VisionCacheRefused(ValueError):
    """The vision tower (or merger) is being trained, so its outputs are not constant."""


def trainable_vision_weights(inner: Any) -> list[str]:
    visual = getattr(inner.model, "visual", None)
    if visual is None:
        raise VisionCacheRefused(f"perf.vision_cache: {type(inner).__name__} has no `model.visual` vision tower.")
    names = [n for n, p in visual.named_parameters() if p.requires_grad]
    names += [n for n, _ in visual.named_modules() if n.rsplit(".", 1)[-1].startswith(("lora_", "modules_to_save"))]
    return names


def refuse_trained_vision(inner: Any) -> None:
    """A VisionCacheRefused naming the trained weights when the vision tower or merger is being trained."""
    trainable = trainable_vision_weights(inner)
    if trainable:
        raise VisionCacheRefused(
            "perf.vision_cache=true needs a frozen vision tower and merger, but these are trained: "
            f"{', '.join(trainable[:5])}{' ...' if len(trainable) > 5 else ''}. Set perf.vision_cache=false "
            "(or keep policy.freeze_vision_tower=true, policy.freeze_projector=true and the LoRA on the language model)."
        )


class VisionFeatureCache:
    SAMPLES = 32  # pixel values per image in the lookup key; a match is always confirmed on every pixel

    def __init__(self, compute: Any, max_images: int):
        """`compute`: the library's own `get_image_features` (the backbone's `library_image_features`)."""
        self.compute, self.max_images = compute, max(0, int(max_images))
        self.entries: OrderedDict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self.hits = self.misses = 0
        self.pixel_source: Any = None  # a CachedImageProcessor in handle mode (perf.pixel_handles)

    def _fingerprints(self, pixel_values: torch.Tensor, rows: list[int]) -> list[tuple]:
        """Per image: its row count and SAMPLES exact pixel values at fixed relative offsets (one gather, one sync)."""
        dim = pixel_values.shape[-1]
        offsets, start = [], 0
        for n in rows:
            size = n * dim
            offsets.append(torch.linspace(0, size - 1, self.SAMPLES, dtype=torch.float64).long() + start)
            start += size
        index = torch.cat(offsets).to(pixel_values.device)
        values = pixel_values.reshape(-1)[index].float().view(len(rows), self.SAMPLES).tolist()
        return [(n, *v) for n, v in zip(rows, values, strict=True)]

    def lookup(self, key: tuple, pixels: torch.Tensor) -> torch.Tensor | None:
        for stored_pixels, features in self.entries.get(key, []):
            if stored_pixels.shape == pixels.shape and torch.equal(stored_pixels, pixels):
                self.entries.move_to_end(key)
                return features
        return None

    def store(self, key: tuple, pixels: torch.Tensor | None, features: torch.Tensor) -> None:
        if self.max_images == 0:
            return
        # copies: views would keep the whole batch's pixel and feature tensors alive (a handle's key needs no pixels)
        kept = None if pixels is None else pixels.detach().clone()
        self.entries.setdefault(key, []).append((kept, features.detach().clone()))
        self.entries.move_to_end(key)
        while sum(len(v) for v in self.entries.values()) > self.max_images:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()

    def __call__(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if image_grid_thw is None or kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            return self.compute(pixel_values, image_grid_thw, **kwargs)
        if self.pixel_source is not None and is_handles(pixel_values):
            return self.from_handles(pixel_values, image_grid_thw)
        rows = image_grid_thw.prod(-1).tolist()
        images = torch.split(pixel_values, rows)
        keys = self._fingerprints(pixel_values, rows)
        found: list[torch.Tensor | None] = []
        first_of: dict[int, int] = {}  # a miss repeated within this call is computed once
        for i, (key, pixels) in enumerate(zip(keys, images, strict=True)):
            found.append(self.lookup(key, pixels))
            if found[-1] is None:
                for j in first_of.values():
                    if keys[j] == key and torch.equal(images[j], pixels):
                        break
                else:
                    first_of[i] = i
        if first_of:
            missing = sorted(first_of)
            with torch.no_grad():
                out = self.compute(torch.cat([images[i] for i in missing]), image_grid_thw[missing], return_dict=True)
            for i, features in zip(missing, out.pooler_output, strict=True):
                found[i] = features
                self.store(keys[i], images[i], features)
            self.misses += len(missing)
        for i, features in enumerate(found):
            if features is None:  # a repeat of an image computed in this call
                j = next(j for j in first_of if keys[j] == keys[i] and torch.equal(images[j], images[i]))
                found[i] = found[j]
                self.hits += 1
            elif i not in first_of:
                self.hits += 1
        return BaseModelOutputWithPooling(last_hidden_state=None, pooler_output=tuple(found))


    def from_handles(self, handles: torch.Tensor, image_grid_thw: torch.Tensor) -> Any:
        """Features of images given by pixel handles: by handle from the cache, the tower run on the misses'
        stored pixels (each distinct handle once)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        rows = image_grid_thw.prod(-1)
        starts = torch.cumsum(rows, 0) - rows
        ids = handles[starts.to(handles.device), 0]
        if not torch.equal(handles[:, 0], torch.repeat_interleave(ids, rows.to(handles.device))):
            raise ValueError("pixel handles: an image's rows hold different handles (pixel rows cut mid-image?)")
        keys = [("handle", h) for h in ids.tolist()]
        found: dict[tuple, torch.Tensor] = {}
        for key in dict.fromkeys(keys):
            if key in self.entries:
                self.entries.move_to_end(key)
                found[key] = self.entries[key][0][1]
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing:
            pixels = [self.pixel_source.pixels_of(h) for _, h in missing]
            grid = image_grid_thw[[keys.index(k) for k in missing]]
            with torch.no_grad():
                out = self.compute(torch.cat(pixels).to(image_grid_thw.device), grid, return_dict=True)
            for key, features in zip(missing, out.pooler_output, strict=True):
                found[key] = features
                self.store(key, None, features)
            self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return BaseModelOutputWithPooling(last_hidden_state=None, pooler_output=tuple(found[k] for k in keys))


def is_handles(pixel_values: torch.Tensor) -> bool:
    """Pixel handles (`coz_train.perf.image_cache.PixelHandles`, one handle per pixel row), not pixel rows."""
    return isinstance(pixel_values, PixelHandles)


def install_vision_cache(model: Any, max_images: int) -> VisionFeatureCache:
    """A content-keyed cache set as the backbone's `vision_cache`; returns it (the one there, if set)."""
    try:
        inner, backbone = switchable(model, "perf.vision_cache")
    except ValueError as error:
        raise VisionCacheRefused(str(error)) from None
    if backbone.vision_cache is not None:
        return backbone.vision_cache
    refuse_trained_vision(inner)
    backbone.vision_cache = VisionFeatureCache(backbone.library_image_features, max_images)
    return backbone.vision_cache


def uninstall_vision_cache(model: Any) -> None:
    """Back to the library's own `get_image_features`."""
    _, backbone = switchable(model, "perf.vision_cache")
    backbone.vision_cache = None
