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

With `handles=True` (`perf.pixel_handles`, for a model whose vision tower reads through a
`VisionFeatureCache`) the output's `pixel_values` are not the pixel rows but a pixel handle per row: an
int64 [rows, 1] tensor holding, on each of an image's rows, the number of its stored entry (`handle_of`).
Everything that slices, splits, moves or compares pixel rows by image (TRL's batching, the prefix switches'
grouping) works on the handles as on the rows, and equal images have equal handles; the vision cache turns
an image's handle back into its stored pixels (`pixels_of`) when it has to run the tower. At the paper's
setting that is 1.3 MB per call instead of 780 MB of expanded pixel rows assembled, copied to the GPU,
split and compared.
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

    def __init__(self, image_processor: Any, max_images: int = 64, handles: bool = False):
        self.__dict__["_real"] = image_processor
        self.__dict__["handles"] = handles
        self.__dict__["_handles"] = {}  # handle -> pixel rows of the stored entry it names
        self.__dict__["_next_handle"] = 0
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
        self._handles.clear()
        self.__dict__["_last"] = None

    def pixels_of(self, handle: int) -> torch.Tensor:
        """The pixel rows of the stored image a handle names (`handles=True`)."""
        pixels = self._handles.get(handle)
        if pixels is None:
            raise KeyError(f"pixel handle {handle} names no stored image any more (the image cache keeps "
                           f"{self._max_images}): raise perf.vision_cache_images, or set perf.pixel_handles=false.")
        return pixels

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
                self.__dict__["_next_handle"] = self._next_handle + 1
                self._entries[key] = (pixels.clone(), grid.clone(), self._next_handle)
                self._handles[self._next_handle] = self._entries[key][0]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        pieces = []
        for key in keys:
            self._entries.move_to_end(key)
            pieces.append(self._entries[key])
        while len(self._entries) > max(self._max_images, len(set(keys))):
            self._handles.pop(self._entries.popitem(last=False)[1][2], None)
        if self.handles:  # [rows, 1]: each image's rows hold its handle
            pixel_values = torch.cat([torch.full((len(p), 1), h, dtype=torch.int64) for p, _, h in pieces])
        else:
            pixel_values = torch.cat([p for p, _, _ in pieces])
        data = {"pixel_values": pixel_values, "image_grid_thw": torch.stack([g for _, g, _ in pieces])}
        self.__dict__["_last"] = (keys, data)
        return BatchFeature(data=dict(data), tensor_type=None)


def install_image_cache(processor: Any, max_images: int = 64, handles: bool = False) -> CachedImageProcessor | None:
    """Wrap `processor.image_processor` (once); None when the processor has no image processor. `handles`: the
    outputs' `pixel_values` are pixel handles (see the module's docstring)."""
    current = getattr(processor, "image_processor", None)
    if current is None:
        return None
    if isinstance(current, CachedImageProcessor):
        current.__dict__["handles"] = current.handles or handles
        return current
    cached = CachedImageProcessor(current, max_images, handles)
    processor.image_processor = cached
    return cached
