"""Image preprocessing cache (`perf.image_cache`): each distinct image is resized and patchified once.

A GRPO step preprocesses the same images again and again on the CPU: TRL tokenizes the B x G
expanded prompts for generation and once more for the log-prob inputs, and the critic encodes its
B x G conversations, each time resizing, normalising and patchifying both crops of every row.
With 504-px crops that is ~7 ms per image on one CPU thread, ~1 s per 64-row call, three calls per
step, almost all of it repeated work (every image appears G times).

`install_image_cache(processor)` wraps the processor's image processor: images are keyed by their
content (size, mode and a 128-bit xxHash3 digest of their pixels, hashed once per image object), the image
processor's configuration and the call's options; only unseen images go through the real image processor, and
the result is assembled in the caller's order (or handed back whole when a call repeats the previous one).
Preprocessing is deterministic, so the output equals the plain one bit for bit.

The preprocessed images live in a `PreprocessedImages` store. The caches that `install_image_cache` puts on
image processors of one class share that class's store, so equally configured processors (the policy's and a
Qwen critic's: the same class and `to_dict()`) preprocess each image once between them: the critic reads the
policy's patches of the step's images instead of resizing and patchifying them again. Differently configured
ones only share the store's room (the configuration is part of every key). Unseen images go through the image
processor one per call where it processes them one by one anyway (a torch image processor on the CPU): a stored
image's pixel rows are then that call's output, and no concatenation of every unseen image's rows (~6 MB each at
504 px) is made only to be cut up again; elsewhere they are a view of the batch output they came in. Nothing writes
into them (the processor's callers get a concatenation or handles, and the vision tower reads them), which
tests/perf/test_image_cache.py checks after a forward and backward pass. Calls it cannot serve from per-image
pieces (outputs other than the tensors `pixel_values` / `image_grid_thw`, non-PIL inputs, `return_tensors` other
than "pt") go straight to the real image processor.

With `handles=True` (`perf.pixel_handles`, for a model whose vision tower reads through a
`VisionFeatureCache`) the output's `pixel_values` are not pixel rows but `PixelHandles`: a tensor of that
named type (int64 [rows, 1]) holding, on each of an image's rows, the number of its stored entry.
Everything that slices, splits, moves or compares pixel rows by image (TRL's batching, the prefix switches'
grouping) works on the handles as on the rows and keeps their type, and equal images have equal handles; the
vision cache turns an image's handle back into its stored pixels (`pixels_of`) when it has to run the tower.
At the paper's setting that is 1.3 MB per call instead of 780 MB of expanded pixel rows assembled, copied to
the GPU, split and compared.

The wrapper says what it is. The processor's `image_processor` becomes an instance of `Cached<Class>`, a
subclass of the image processor's own class (made once per class, e.g. `CachedQwen2VLImageProcessor`) that
shares the wrapped image processor's attribute dictionary: it is an instance of the library's class by
inheritance, `type()` names it as the cached one, and reading or setting an attribute reads or sets the
wrapped image processor's. Its own are `__call__` and the cache's state, kept in slots out of the shared
dictionary. Saving writes what the wrapped image processor writes (`to_dict` is the wrapped one's, so
`image_processor_type` names the library's class and a saved processor loads back as the library's own).
A copy or pickle of the wrapper is a new wrapper, its cache empty, of a copy of the wrapped image processor.
"""

from __future__ import annotations

import copy
import functools
import json
import threading
import weakref
from collections import OrderedDict
from typing import Any

import torch
import xxhash

from coz_train.perf.wrapper_class import unwrapped, wrapper_class

SERVED_KEYS = {"pixel_values", "image_grid_thw"}


def is_image(value: Any) -> bool:
    """Whether `value` is a PIL image (or reads as one: pixels, a mode and a size)."""
    return hasattr(value, "tobytes") and hasattr(value, "mode") and hasattr(value, "size")


def _flat(images: Any) -> list | None:
    """A flat list of PIL images from one image, a list, or a list of lists; None for anything else."""
    if is_image(images):
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


_EXPORTED_MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "I", "F", "I;16")  # pixels alone (no palette) make the image


@functools.cache
def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        return None
    return pyarrow


def pixel_memory(image: Any) -> Any:
    """A buffer of the image's pixels: Pillow's own memory, exported through the Arrow C data interface without a
    copy (`pyarrow.array(image)`: RGB as 4 bytes per pixel, the fourth a pad byte), or `tobytes()`, a packed copy
    (0.26 ms for a 512-px RGB image), where Pillow does not export it (rows not in one block, other modes) or
    pyarrow is missing. Equal buffers mean equal pixels; equal pixels may differ in the pad byte (a miss, never a
    wrong hit). A palette image's buffer holds its palette too."""
    arrow = _pyarrow() if image.mode in _EXPORTED_MODES else None
    if arrow is not None:
        try:
            return arrow.array(image).buffers()[-1]
        except (ValueError, TypeError, AttributeError, arrow.ArrowException):  # e.g. rows in several blocks
            pass
    data = image.tobytes()
    palette = image.getpalette() if image.mode in ("P", "PA") else None
    return data + bytes(palette) if palette else data


def digest(image: Any) -> bytes:
    """128-bit xxHash3 digest of an image's pixels (`pixel_memory`), computed once per live image object (0.04 ms for
    a 512-px RGB image, BLAKE2 of its bytes 1.3 ms; a key collision would need two of the run's images to agree on
    128 bits by chance)."""
    known = _DIGESTS.get(id(image))
    if known is not None and known[0]() is image:
        return known[1]
    value = xxhash.xxh3_128(pixel_memory(image)).digest()
    try:
        _DIGESTS[id(image)] = (weakref.ref(image), value)
    except TypeError:  # an image type without weak references: hash it each time
        return value
    if len(_DIGESTS) > 4096:
        for key in [k for k, (ref, _) in _DIGESTS.items() if ref() is None]:
            del _DIGESTS[key]
    return value


class PixelHandles(torch.Tensor):
    """Not pixels: one handle per pixel row.

    An int64 [rows, 1] tensor handed out as `pixel_values` by a `CachedImageProcessor` with `handles=True`: each
    of an image's rows holds the number of the image's stored entry, and `pixels_of(handle)` gives its pixel rows
    back. Indexing, slicing, `torch.split`, `torch.cat` and `.to(device)` keep the type (torch's rule for tensor
    subclasses), so it reaches the model's `get_image_features` as PixelHandles, where a `VisionFeatureCache` with
    that image processor as its `pixel_source` resolves it. Made with `Tensor.as_subclass(PixelHandles)`.

    Handles must never reach the vision tower itself: the library's `get_image_features` starts with
    `pixel_values.type(self.visual.dtype)`, so any operation that would give floating-point PixelHandles raises
    (instead of the tower failing on the shape, or running on the handle numbers when the row count happens to fit).
    """

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = super().__torch_function__(func, types, args, kwargs)
        if isinstance(out, PixelHandles) and out.is_floating_point():
            raise RuntimeError(
                f"pixel handles are not pixels: {getattr(func, '__name__', func)} would make floating-point values "
                "of them. They reach the vision tower only through a VisionFeatureCache whose pixel_source is the "
                "image cache that handed them out (perf.pixel_handles needs perf.vision_cache).")
        return out


class PreprocessedImages:
    """Preprocessed images by key (configuration, options, size, mode, digest): each entry its pixel rows (a view
    of the batch output it came in), its grid and its handle, least recently used dropped first.

    Shared by the `CachedImageProcessor`s that use it (`users`); it keeps as many images as they keep together,
    so one cache's images never push out another's. Its lock makes a look-up and an insertion one step when a
    reward thread (the critic) and the trainer's thread use it at once.
    """

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, int]] = OrderedDict()
        self.handles: dict[int, torch.Tensor] = {}  # handle -> pixel rows of the stored entry it names
        self.next_handle = 0
        self.processed = 0  # images run through an image processor into this store
        self.lock = threading.RLock()
        self.users: weakref.WeakSet = weakref.WeakSet()

    def capacity(self, at_least: int) -> int:
        return max(sum(user._max_images for user in list(self.users)), at_least, 1)

    def add(self, keys: list[tuple], out: Any) -> None:
        """The image processor's output for the images of `keys`, one entry per image."""
        rows = out["image_grid_thw"].prod(-1).tolist()
        for key, pixels, grid in zip(keys, torch.split(out["pixel_values"], rows), out["image_grid_thw"],
                                     strict=True):
            self.next_handle += 1
            self.entries[key] = (pixels, grid, self.next_handle)
            self.handles[self.next_handle] = pixels
        self.processed += len(keys)

    def take(self, keys: list[tuple]) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """The entries of `keys` (all stored), marked as just used; then the store trimmed to its capacity."""
        pieces = []
        for key in keys:
            self.entries.move_to_end(key)
            pieces.append(self.entries[key])
        keep = self.capacity(len(set(keys)))
        while len(self.entries) > keep:
            self.handles.pop(self.entries.popitem(last=False)[1][2], None)
        return pieces

    def clear(self) -> None:
        self.entries.clear()
        self.handles.clear()


# image processor class -> the store its installed caches share, while one of them lives
_STORES: weakref.WeakValueDictionary[type, PreprocessedImages] = weakref.WeakValueDictionary()
_STORES_LOCK = threading.Lock()


def shared_store(kind: type) -> PreprocessedImages:
    """The store that the live caches `install_image_cache` put on image processors of class `kind` share."""
    with _STORES_LOCK:
        store = _STORES.get(kind)
        if store is None:
            store = _STORES[kind] = PreprocessedImages()
        return store


def config_key(image_processor: Any) -> str:
    """An image processor's class and configuration (what it saves): equal keys preprocess alike."""
    return f"{type(image_processor).__qualname__}:{json.dumps(image_processor.to_dict(), sort_keys=True, default=repr)}"


def one_by_one(image_processor: Any, kwargs: dict) -> bool:
    """Whether the image processor processes a call's images one by one: a torch image processor on the CPU with
    grouping left to its default (transformers groups equally sized images into one batch on other devices only)."""
    grouping = kwargs.get("disable_grouping", getattr(image_processor, "disable_grouping", None))
    device = kwargs.get("device", getattr(image_processor, "device", None))
    return grouping is True or (grouping is None and device in (None, "cpu"))


def _cached_class(kind: type) -> type:
    """`Cached<kind>`: the image processor class `kind` with the cache in front of its `__call__`, one per class."""
    return wrapper_class("Cached", CachedImageProcessor, kind)


def _unwrapped(image_processor: Any) -> Any:
    return unwrapped(image_processor, CachedImageProcessor)


class CachedImageProcessor:
    """The base of every `Cached<Class>` (see the module's docstring): `CachedImageProcessor(image_processor)` is
    an instance of `Cached<type(image_processor)>` sharing `image_processor`'s attributes.

    A call with exactly the images (and options) of the previous call gets that call's tensors back
    (TRL preprocesses the same prompts twice in a row); nothing downstream modifies them in place.
    """

    __slots__ = ("_wrapped", "handles", "hits", "misses", "_max_images", "store", "_last")

    def __new__(cls, image_processor: Any, max_images: int = 64, handles: bool = False,
                store: PreprocessedImages | None = None) -> CachedImageProcessor:
        kind = _cached_class(type(_unwrapped(image_processor))) if cls is CachedImageProcessor else cls
        return object.__new__(kind)

    def __init__(self, image_processor: Any, max_images: int = 64, handles: bool = False,
                 store: PreprocessedImages | None = None):
        """`store`: where the preprocessed images are kept (shared with other caches); None: a store of its own."""
        image_processor = _unwrapped(image_processor)
        object.__setattr__(self, "__dict__", image_processor.__dict__)  # the wrapped one's attributes, shared
        self._wrapped = image_processor
        self.handles = handles
        self.hits = self.misses = 0  # images served from the store / preprocessed by this cache
        self._max_images = max(1, int(max_images))
        self.store = store if store is not None else PreprocessedImages()
        self.store.users.add(self)
        self._last: tuple | None = None

    def to_dict(self) -> dict[str, Any]:
        """What the wrapped image processor saves (its class as `image_processor_type`)."""
        return self._wrapped.to_dict()

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return CachedImageProcessor, (self._wrapped, self._max_images, self.handles)

    def __copy__(self) -> CachedImageProcessor:
        return CachedImageProcessor(copy.copy(self._wrapped), self._max_images, self.handles)

    def __deepcopy__(self, memo: dict) -> CachedImageProcessor:
        return CachedImageProcessor(copy.deepcopy(self._wrapped, memo), self._max_images, self.handles)

    def clear(self) -> None:
        """Forget every stored image (of every cache sharing the store)."""
        with self.store.lock:
            self.store.clear()
        self._last = None

    def pixels_of(self, handle: int) -> torch.Tensor:
        """The pixel rows of the stored image a handle names (`handles=True`)."""
        pixels = self.store.handles.get(handle)
        if pixels is None:
            raise KeyError(f"pixel handle {handle} names no stored image any more (the image cache keeps "
                           f"{self._max_images}): raise perf.vision_cache_images, or set perf.pixel_handles=false.")
        return pixels

    def __call__(self, images: Any = None, *args: Any, **kwargs: Any) -> Any:
        from transformers.feature_extraction_utils import BatchFeature

        flat = None if args or kwargs.get("return_tensors") not in (None, "pt") else _flat(images)
        if not flat:
            return self._wrapped(images, *args, **kwargs)
        # the torch image processor returns tensors with or without return_tensors="pt": one entry serves both
        options = (config_key(self._wrapped), tuple(sorted((k, repr(v)) for k, v in kwargs.items()
                                                          if k != "return_tensors")))
        keys = [(options, im.size, im.mode, digest(im)) for im in flat]
        if self._last is not None and self._last[0] == keys:
            self.hits += len(keys)
            return BatchFeature(data=dict(self._last[1]), tensor_type=None)
        store = self.store
        with store.lock:
            missing: dict[tuple, Any] = {}
            for key, image in zip(keys, flat, strict=True):
                if key not in store.entries and key not in missing:
                    missing[key] = image
            # each image on its own where the image processor processes them one by one anyway (on the CPU, grouping
            # off): its rows are then the output itself, not a slice of a concatenation of all of them (~6 MB each)
            batches = [[k] for k in missing] if one_by_one(self._wrapped, kwargs) else [list(missing)] if missing else []
            for batch in batches:
                out = self._wrapped([missing[k] for k in batch], **kwargs)
                if set(out.keys()) != SERVED_KEYS or not all(isinstance(out[k], torch.Tensor) for k in SERVED_KEYS):
                    self._last = None
                    return self._wrapped(images, **kwargs)
                store.add(batch, out)
            pieces = store.take(keys)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if self.handles:  # [rows, 1]: each image's rows hold its handle
            pixel_values = torch.cat([torch.full((len(p), 1), h, dtype=torch.int64) for p, _, h in pieces])
            pixel_values = pixel_values.as_subclass(PixelHandles)
        else:
            pixel_values = torch.cat([p for p, _, _ in pieces])
        data = {"pixel_values": pixel_values, "image_grid_thw": torch.stack([g for _, g, _ in pieces])}
        self._last = (keys, data)
        return BatchFeature(data=dict(data), tensor_type=None)


def install_image_cache(processor: Any, max_images: int = 64, handles: bool = False) -> CachedImageProcessor | None:
    """Wrap `processor.image_processor` (once); None when the processor has no image processor. `handles`: the
    outputs' `pixel_values` are `PixelHandles` (see the module's docstring). The cache keeps its images in the
    store shared by every cache installed on an image processor of the same class (`shared_store`)."""
    current = getattr(processor, "image_processor", None)
    if current is None:
        return None
    if isinstance(current, CachedImageProcessor):
        current.handles = current.handles or handles
        return current
    cached = CachedImageProcessor(current, max_images, handles, shared_store(type(current)))
    processor.image_processor = cached
    return cached
