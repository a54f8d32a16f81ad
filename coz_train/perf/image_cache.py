"""Image preprocessing cache (`perf.image_cache`): each distinct image is resized and patchified once.

A GRPO step preprocesses the same images again and again on the CPU: TRL tokenizes the B x G
expanded prompts for generation and once more for the log-prob inputs, and the critic encodes its
B x G conversations, each time resizing, normalising and patchifying both crops of every row.
With 504-px crops that is ~7 ms per image on one CPU thread, ~1 s per 64-row call, three calls per
step, almost all of it repeated work (every image appears G times).

`install_image_cache(processor)` wraps the processor's image processor: images are keyed by their
content (size, mode and a 128-bit BLAKE2 digest of their pixels, hashed once per image object) and
by the call's options; only unseen images go through the real image processor, and the result is
assembled in the caller's order (or handed back whole when a call repeats the previous one). Preprocessing is deterministic, so the output equals the plain one bit for bit. Calls it
cannot serve from per-image pieces (outputs other than the tensors `pixel_values` / `image_grid_thw`,
non-PIL inputs, `return_tensors` other than "pt") go straight to the real image processor.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from typing import Any

import torch

SERVED_KEYS = {"pixel_values", "image_grid_thw"}


def _flat(images: Any) -> list | None:
    """A flat list of PIL images from one image, a list, or a list of lists; None for anything else."""
    if hasattr(images, "tobytes") and hasattr(images, "mode"):
        return [images]
    if not isinstance(images, (list, tuple)):
        return None
    out: list = []
    for item in images:
        inner = _flat(item)
        if inner is None:
            return None
        out += inner
    return out


_DIGESTS: dict[int, tuple[Any, bytes]] = {}  # id(image) -> (weak reference, digest): one hash per image object


def digest(image: Any) -> bytes:
    """128-bit BLAKE2 digest of an image's pixels, computed once per live image object."""
    known = _DIGESTS.get(id(image))
    if known is not None and known[0]() is image:
        return known[1]
    value = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
    try:
        _DIGESTS[id(image)] = (weakref.ref(image), value)
    except TypeError:  # an image type without weak references: hash it each time
        return value
    if len(_DIGESTS) > 4096:
        for key in [k for k, (ref, _) in _DIGESTS.items() if ref() is None]:
            del _DIGESTS[key]
    return value


class CachedImageProcessor:
    """Stands in for a Qwen-VL image processor; everything but `__call__` is the real one's.

    A call with exactly the images (and options) of the previous call gets that call's tensors back
    (TRL preprocesses the same prompts twice in a row); nothing downstream modifies them in place.
    """

    def __init__(self, image_processor: Any, max_images: int = 64):
        self.__dict__["_real"] = image_processor
        self.__dict__["_entries"] = OrderedDict()
        self.__dict__["_max_images"] = max(1, int(max_images))
        self.__dict__["_last"] = None
        self.__dict__["hits"] = 0
        self.__dict__["misses"] = 0

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance checks (e.g. when the processor is saved) see the real one
        return type(self.__dict__["_real"])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "_real" not in self.__dict__:  # copies and pickles build the object bare
            raise AttributeError(name)
        return getattr(self.__dict__["_real"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("hits", "misses"):
            self.__dict__[name] = value
        else:
            setattr(self._real, name, value)

    def clear(self) -> None:
        self._entries.clear()
        self.__dict__["_last"] = None

    def __call__(self, images: Any = None, *args: Any, **kwargs: Any) -> Any:
        from transformers.feature_extraction_utils import BatchFeature

        flat = None if args or kwargs.get("return_tensors") not in (None, "pt") else _flat(images)
        if not flat:
            return self._real(images, *args, **kwargs)
        # the torch image processor returns tensors with or without return_tensors="pt": one entry serves both
        options = tuple(sorted((k, repr(v)) for k, v in kwargs.items() if k != "return_tensors"))
        keys = [(options, im.size, im.mode, digest(im)) for im in flat]
        if self._last is not None and self._last[0] == keys:
            self.hits += len(keys)
            return BatchFeature(data=dict(self._last[1]), tensor_type=None)
        missing: dict[tuple, Any] = {}
        for key, image in zip(keys, flat, strict=True):
            if key not in self._entries and key not in missing:
                missing[key] = image
        if missing:
            out = self._real(list(missing.values()), **kwargs)
            if set(out.keys()) != SERVED_KEYS or not all(isinstance(out[k], torch.Tensor) for k in SERVED_KEYS):
                self.clear()
                return self._real(images, **kwargs)
            rows = out["image_grid_thw"].prod(-1).tolist()
            for key, pixels, grid in zip(missing, torch.split(out["pixel_values"], rows), out["image_grid_thw"],
                                         strict=True):
                self._entries[key] = (pixels.clone(), grid.clone())
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        pieces = []
        for key in keys:
            self._entries.move_to_end(key)
            pieces.append(self._entries[key])
        while len(self._entries) > max(self._max_images, len(set(keys))):
            self._entries.popitem(last=False)
        data = {"pixel_values": torch.cat([p for p, _ in pieces]), "image_grid_thw": torch.stack([g for _, g in pieces])}
        self.__dict__["_last"] = (keys, data)
        return BatchFeature(data=dict(data), tensor_type=None)


def install_image_cache(processor: Any, max_images: int = 64) -> CachedImageProcessor | None:
    """Wrap `processor.image_processor` (once); None when the processor has no image processor."""
    current = getattr(processor, "image_processor", None)
    if current is None:
        return None
    if isinstance(current, CachedImageProcessor):
        return current
    cached = CachedImageProcessor(current, max_images)
    processor.image_processor = cached
    return cached
