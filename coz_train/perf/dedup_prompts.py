"""Each distinct prompt of a processor call processed once (`perf.dedup_prompts`).

TRL calls the policy's processor twice per step on the B x G expanded prompts (through `apply_chat_template` for
generation, and directly for the log-prob inputs): G copies of every prompt, each with its images. Beyond the
images (`perf.image_cache`) and the tokenizer (`perf.text_cache`), the processor's call does per-row work of
its own: it expands every image placeholder into the image's tokens, checks the placeholders of every row
against its tokens (a regular expression over each ~700-token text) and builds every row's token types; at the
paper's setting that is 64 rows for 8 distinct prompts, ~40 ms of CPU per step.

`DedupPrompts(processor)` is the processor with a deduplicating `__call__`: the rows of a call are keyed by their
text and their images (each image's size, mode and pixel digest, `perf.image_cache.digest`); the distinct rows go
through the processor's own call, and each row of the call gets its prompt's result. That equals the processor's
output on the whole batch bit for bit: a row's tokens, mask and token types depend on its own text and images
only, a padded batch is padded to its longest row, which is the longest distinct one, and a row's pixel rows and
grids are its images' (Qwen-style image processors process each image on its own). The row keys cover the
tokenizer's outputs (`input_ids`, `attention_mask`, token types), the image keys `image_grid_thw` and
`pixel_values` (pixel rows, or `PixelHandles` with `perf.pixel_handles`). A call it does not cover goes to the
processor's own call as it is: no repeated row, videos or audio, images not given per row, a row whose image
placeholders do not match its images (the processor would then pair images across rows), overflowing tokens or
text pairs, or an output key it does not know.

The wrapper says what it is. The trainer's `processing_class` becomes an instance of `DedupPrompts<Class>`, a
subclass of the processor's own class (made once per class, e.g. `DedupPromptsQwen2_5_VLProcessor`) sharing
the wrapped processor's attribute dictionary: its image processor and tokenizer are the processor's (and their
caches, when those switches are on). Its own are `__call__`, two counters and saving: `save_pretrained` and
`to_dict` are the wrapped processor's, so a saved processor names the library's class and loads back as it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from coz_train.perf.image_cache import digest
from coz_train.perf.wrapper_class import unwrapped, wrapper_class

ROW_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
IMAGE_KEYS = ("image_grid_thw",)
PIXEL_KEYS = ("pixel_values",)
_UNSERVED = ("text_pair", "text_target", "text_pair_target", "return_overflowing_tokens", "return_offsets_mapping",
             "return_text_replacement_offsets")


def _dedup_class(kind: type) -> type:
    return wrapper_class("DedupPrompts", DedupPrompts, kind)


def _unwrapped(processor: Any) -> Any:
    return unwrapped(processor, DedupPrompts)


def _is_image(value: Any) -> bool:
    return hasattr(value, "tobytes") and hasattr(value, "mode") and hasattr(value, "size")


def _rows(value: Any, index: list[int]) -> Any:
    """`value` (one entry per distinct row: a tensor, an array or a list) with row `index[r]` at row r."""
    if isinstance(value, torch.Tensor):
        return value[torch.tensor(index, dtype=torch.long)]
    if hasattr(value, "shape"):  # numpy
        return value[index]
    return [copy.copy(value[i]) for i in index]  # each row its own list


class DedupPrompts:
    """The base of every `DedupPrompts<Class>` (see the module's docstring): `DedupPrompts(processor)` is an instance
    of `DedupPrompts<type(processor)>` sharing `processor`'s attributes. `rows` counts the rows asked for,
    `processed` the rows run through the processor's call."""

    __slots__ = ("_wrapped", "rows", "processed")

    def __new__(cls, processor: Any) -> DedupPrompts:
        return object.__new__(_dedup_class(type(_unwrapped(processor))) if cls is DedupPrompts else cls)

    def __init__(self, processor: Any):
        processor = _unwrapped(processor)
        object.__setattr__(self, "__dict__", processor.__dict__)  # the wrapped one's attributes, shared
        self._wrapped = processor
        self.rows = self.processed = 0

    @property
    def wrapped(self) -> Any:
        """The processor this one deduplicates the calls of."""
        return self._wrapped

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped processor's files (its class as `processor_class`)."""
        return self._wrapped.save_pretrained(*args, **kwargs)

    def to_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self._wrapped.to_dict(*args, **kwargs)

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return DedupPrompts, (self._wrapped,)

    def __copy__(self) -> DedupPrompts:
        return DedupPrompts(copy.copy(self._wrapped))

    def __deepcopy__(self, memo: dict) -> DedupPrompts:
        return DedupPrompts(copy.deepcopy(self._wrapped, memo))

    def __call__(self, images: Any = None, text: Any = None, *args: Any, **kwargs: Any) -> Any:
        other_media = args or kwargs.get("videos") is not None or kwargs.get("audio") is not None
        plan = None if other_media else self._plan(images, text, kwargs)
        if plan is None:
            return self._wrapped(images, text, *args, **kwargs)
        distinct, owner = plan
        self.rows += len(owner)
        self.processed += len(distinct)
        out = self._wrapped(images=[images[r] for r in distinct], text=[text[r] for r in distinct], **kwargs)
        expanded = self._expand(out, owner, [len(images[r]) for r in distinct])
        if expanded is None:  # an output this does not know how to repeat: the processor's call on every row
            self.processed += len(owner)
            return self._wrapped(images=images, text=text, **kwargs)
        return expanded

    def _plan(self, images: Any, text: Any, kwargs: dict) -> tuple[list[int], list[int]] | None:
        """(the first row of each distinct prompt, each row's distinct prompt) when the call is covered and has
        a repeated row; None otherwise."""
        if (not isinstance(text, list) or len(text) < 2 or not all(isinstance(t, str) for t in text)
                or not isinstance(images, (list, tuple)) or len(images) != len(text)
                or any(kwargs.get(k) for k in _UNSERVED)):
            return None
        if not all(isinstance(row, (list, tuple)) and row and all(_is_image(im) for im in row) for row in images):
            return None
        image_token = getattr(self._wrapped, "image_token", None)
        if not isinstance(image_token, str) or not image_token:
            return None
        keys: dict[tuple, int] = {}
        owner = [keys.setdefault((t, *((im.size, im.mode, digest(im)) for im in row)), len(keys))
                 for t, row in zip(text, images, strict=True)]
        if len(keys) == len(owner):
            return None
        distinct: list[int] = []  # prompts are numbered in the order they first appear
        for r, g in enumerate(owner):
            if g == len(distinct):
                distinct.append(r)
        if any(text[r].count(image_token) != len(images[r]) for r in distinct):
            return None  # the processor pairs images with placeholders across rows: not a per-row call
        return distinct, owner

    @staticmethod
    def _expand(out: Any, owner: list[int], counts: list[int]) -> Any:
        """The distinct rows' output repeated to every row; None when it holds a key this does not know."""
        from transformers.feature_extraction_utils import BatchFeature

        if not set(out.keys()) <= set(ROW_KEYS + IMAGE_KEYS + PIXEL_KEYS):
            return None
        starts = [0]
        for count in counts:
            starts.append(starts[-1] + count)
        images = [i for g in owner for i in range(starts[g], starts[g + 1])]  # each row's images, in row order
        data: dict[str, Any] = {}
        for key, value in out.items():
            if key in ROW_KEYS:
                data[key] = _rows(value, owner)
            elif key in IMAGE_KEYS:
                data[key] = _rows(value, images)
        if "pixel_values" in out:
            grid = out.get("image_grid_thw")
            if not isinstance(grid, torch.Tensor) or not isinstance(out["pixel_values"], torch.Tensor):
                return None
            pieces = torch.split(out["pixel_values"], grid.prod(-1).tolist())
            data["pixel_values"] = torch.cat([pieces[i] for i in images])
        return BatchFeature(data={k: data[k] for k in out.keys()}, tensor_type=None)


def install_dedup_prompts(trainer: Any) -> DedupPrompts | None:
    """The deduplicating processor for `trainer.processing_class` (None when it is no multimodal processor or is
    one already); the caller sets it on the trainer."""
    processor = trainer.processing_class
    if isinstance(processor, DedupPrompts) or getattr(processor, "image_processor", None) is None \
            or getattr(processor, "tokenizer", None) is None:
        return None
    return DedupPrompts(processor)
