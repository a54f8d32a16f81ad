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

Its `apply_chat_template` does the same for conversations, which TRL renders twice per step (a batch of the
B x G conversations for generation, then each one alone for the log-prob inputs): a batch's conversations are keyed
by their structure, texts and images, the distinct ones rendered (and processed, with `tokenize=True`) once and
repeated to their rows; a single conversation's text is kept by the same key and the call's options for the next
`TEXT_MEMORY` distinct ones. A chat template is a function of the conversation and the options (a template that
reads the clock, e.g. `strftime_now`, renders the date of a conversation's first rendering while it is kept).
Conversations holding anything but texts, numbers, lists, dicts and images go to the processor's method as they are.

The wrapper says what it is. The trainer's `processing_class` becomes an instance of `DedupPrompts<Class>`, a
subclass of the processor's own class (made once per class, e.g. `DedupPromptsQwen2_5_VLProcessor`) sharing
the wrapped processor's attribute dictionary: its image processor and tokenizer are the processor's (and their
caches, when those switches are on). Its own are `__call__`, two counters and saving: `save_pretrained` and
`to_dict` are the wrapped processor's, so a saved processor names the library's class and loads back as it.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch

from coz_train.perf.image_cache import digest, is_image
from coz_train.perf.wrapper_class import unwrapped, wrapper_class

ROW_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
IMAGE_KEYS = ("image_grid_thw",)
PIXEL_KEYS = ("pixel_values",)
TEXT_MEMORY = 256  # one-conversation texts kept (distinct conversations and options)
_UNSERVED = ("text_pair", "text_target", "text_pair_target", "return_overflowing_tokens", "return_offsets_mapping",
             "return_text_replacement_offsets")


def _dedup_class(kind: type) -> type:
    return wrapper_class("DedupPrompts", DedupPrompts, kind)


def _unwrapped(processor: Any) -> Any:
    return unwrapped(processor, DedupPrompts)


def _rows(value: Any, index: list[int]) -> Any:
    """`value` (one entry per distinct row: a tensor, an array or a list) with row `index[r]` at row r."""
    if isinstance(value, torch.Tensor):
        return value[torch.tensor(index, dtype=torch.long)]
    if hasattr(value, "shape"):  # numpy
        return value[index]
    return [copy.copy(value[i]) for i in index]  # each row its own list


class _Unkeyed(Exception):
    """A value a conversation key cannot stand for (a function, a file path to load, ...)."""


def content_key(value: Any) -> Any:
    """A hashable key equal for equal conversations (or chat-template options): their structure and texts, each
    image by size, mode and pixel digest."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return (type(value).__name__, value)
    if is_image(value):
        return ("image", value.size, value.mode, digest(value))
    if isinstance(value, dict):
        return ("dict", *((k, content_key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("list", *(content_key(v) for v in value))
    raise _Unkeyed(type(value).__name__)


def _images_in(value: Any) -> int:
    if is_image(value):
        return 1
    if isinstance(value, dict):
        return sum(_images_in(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_images_in(v) for v in value)
    return 0


def first_rows(owner: list[int]) -> list[int]:
    """The first row of each distinct item, items numbered in the order they first appear."""
    distinct: list[int] = []
    for r, g in enumerate(owner):
        if g == len(distinct):
            distinct.append(r)
    return distinct


class DedupPrompts:
    """The base of every `DedupPrompts<Class>` (see the module's docstring): `DedupPrompts(processor)` is an instance
    of `DedupPrompts<type(processor)>` sharing `processor`'s attributes. `rows` counts the rows asked for,
    `processed` the rows run through the processor's call; `conversations` and `rendered` the same for
    `apply_chat_template`."""

    __slots__ = ("_wrapped", "rows", "processed", "conversations", "rendered", "_texts")

    def __new__(cls, processor: Any) -> DedupPrompts:
        return object.__new__(_dedup_class(type(_unwrapped(processor))) if cls is DedupPrompts else cls)

    def __init__(self, processor: Any):
        processor = _unwrapped(processor)
        object.__setattr__(self, "__dict__", processor.__dict__)  # the wrapped one's attributes, shared
        self._wrapped = processor
        self.rows = self.processed = 0
        self.conversations = self.rendered = 0  # conversations asked for / run through the chat template
        self._texts: OrderedDict[tuple, str] = OrderedDict()  # one conversation's text, by conversation and options

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

    def apply_chat_template(self, conversation: Any, *args: Any, **kwargs: Any) -> Any:
        """The processor's `apply_chat_template`, each distinct conversation of a batch rendered (and, with
        `tokenize=True`, processed) once; one conversation's text (`tokenize=False`) is kept for the next
        `TEXT_MEMORY` distinct conversations (TRL renders each of a step's prompts again, one call each)."""
        wrapped = self._wrapped
        if args or kwargs.get("return_assistant_tokens_mask") or not isinstance(conversation, (list, tuple)):
            return wrapped.apply_chat_template(conversation, *args, **kwargs)
        try:
            options = content_key([kwargs, getattr(wrapped, "chat_template", None)])  # a template set later: others
            batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
            keys = [content_key(c) for c in conversation] if batched else [content_key(conversation)]
        except _Unkeyed:
            return wrapped.apply_chat_template(conversation, **kwargs)
        self.conversations += len(keys)
        if not batched:
            if kwargs.get("tokenize"):
                self.rendered += 1
                return wrapped.apply_chat_template(conversation, **kwargs)
            memo = (keys[0], options)
            if memo not in self._texts:
                self.rendered += 1
                self._texts[memo] = wrapped.apply_chat_template(conversation, **kwargs)
                while len(self._texts) > TEXT_MEMORY:
                    self._texts.popitem(last=False)
            self._texts.move_to_end(memo)
            return self._texts[memo]
        numbers: dict[Any, int] = {}
        owner = [numbers.setdefault(key, len(numbers)) for key in keys]
        if len(numbers) == len(owner):
            self.rendered += len(owner)
            return wrapped.apply_chat_template(conversation, **kwargs)
        distinct = first_rows(owner)
        self.rendered += len(distinct)
        out = wrapped.apply_chat_template([conversation[r] for r in distinct], **kwargs)
        if not kwargs.get("tokenize"):
            return [out[g] for g in owner]
        if not kwargs.get("return_dict"):
            return _rows(out, owner)
        expanded = self._expand(out, owner, [_images_in(conversation[r]) for r in distinct])
        if expanded is None:
            self.rendered += len(owner)
            return wrapped.apply_chat_template(conversation, **kwargs)
        return expanded

    def _plan(self, images: Any, text: Any, kwargs: dict) -> tuple[list[int], list[int]] | None:
        """(the first row of each distinct prompt, each row's distinct prompt) when the call is covered and has
        a repeated row; None otherwise."""
        if (not isinstance(text, list) or len(text) < 2 or not all(isinstance(t, str) for t in text)
                or not isinstance(images, (list, tuple)) or len(images) != len(text)
                or any(kwargs.get(k) for k in _UNSERVED)):
            return None
        if not all(isinstance(row, (list, tuple)) and row and all(is_image(im) for im in row) for row in images):
            return None
        image_token = getattr(self._wrapped, "image_token", None)
        if not isinstance(image_token, str) or not image_token:
            return None
        keys: dict[tuple, int] = {}
        owner = [keys.setdefault((t, *((im.size, im.mode, digest(im)) for im in row)), len(keys))
                 for t, row in zip(text, images, strict=True)]
        if len(keys) == len(owner):
            return None
        distinct = first_rows(owner)
        if any(text[r].count(image_token) != len(images[r]) for r in distinct):
            return None  # the processor pairs images with placeholders across rows: not a per-row call
        return distinct, owner

    @staticmethod
    def _expand(out: Any, owner: list[int], counts: list[int]) -> Any:
        """The distinct rows' output repeated to every row; None when it holds a key this does not know."""
        from transformers.feature_extraction_utils import BatchFeature

        if not set(out.keys()) <= set(ROW_KEYS + IMAGE_KEYS + PIXEL_KEYS):
            return None
        grid = out.get("image_grid_thw")
        if grid is not None and len(grid) != sum(counts):  # images other than the ones counted (loaded from urls)
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
