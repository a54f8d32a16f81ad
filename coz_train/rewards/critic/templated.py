"""The critic's batch encoded with each shared head processed once (`perf.text_cache` on an `hf` critic).

`HFCritic.encode` hands the batch to the processor's chat template: B x G conversations, each the same two
images and the instruction around one candidate prompt, every one templated, its image placeholders expanded
(648 image tokens per row at the paper's setting) and tokenized whole, about 100 ms of CPU per 64-row call,
almost all of it the same head (system turn, user turn, the images' tokens) again and again.

`TemplatedEncoder(processor)(conversations)` renders the template for every row (strings, cheap), cuts each
rendered text right after its last image placeholder into a head and a rest, hands the distinct heads' images
to the image processor as the processor's call does, runs the processor's call on a head once per head text
and image grids (placeholder expansion and tokenization: a head's image tokens follow from its grids, so at the
paper's setting, every image 512 px, that is once per run), tokenizes each distinct rest (the instruction with
the candidate, the generation prompt) with the tokenizer alone, and assembles the batch: the keys, token ids,
attention mask, token types, pixel values and grids of the processor's call on the whole batch, bit for bit.

Why that is exact: the cut follows an added token (the image placeholder), and a tokenizer splits its input
at added tokens before normalising, pre-tokenizing and merging the pieces between them one by one, so a
text's ids are its head's ids followed by its rest's. Qwen-style image processors (`pixel_values` rows per
image and `image_grid_thw`) process each image on its own, so a row's pixel rows are its images' wherever
they were processed. Checked, not assumed: the first batch is also encoded the processor's way and compared
(a difference, e.g. a tokenizer that appends an end token, or a processor that hands its image processor
other options, turns the encoder off for good, with a warning),
and a batch it does not cover (another conversation layout, a multimodal placeholder in a rest, image outputs
other than rows and grids) goes to the processor's call as it is.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from typing import Any

import torch
from transformers.feature_extraction_utils import BatchFeature

from coz_train.perf.dedup_prompts import first_rows
from coz_train.policy.load import encode_chats

log = logging.getLogger(__name__)

TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
IMAGE_KEYS = ("pixel_values", "image_grid_thw")


def conversation_images(conversation: Any) -> list | None:
    """The images of a critic conversation (one user turn: image parts, then one text part); None otherwise."""
    if not isinstance(conversation, list) or len(conversation) != 1 or not isinstance(conversation[0], dict):
        return None
    content = conversation[0].get("content")
    if conversation[0].get("role") != "user" or not isinstance(content, list) or not content:
        return None
    *images, text = content
    if not (isinstance(text, dict) and text.get("type") == "text" and isinstance(text.get("text"), str)):
        return None
    if not all(isinstance(p, dict) and p.get("type") == "image" and set(p) == {"type", "image"} for p in images):
        return None
    return [p["image"] for p in images]


def same_encoding(a: Any, b: Any) -> bool:
    """Equal keys, and equal tensors (type, shape, dtype and values) under each."""
    if list(a.keys()) != list(b.keys()):
        return False
    for key in a:
        x, y = a[key], b[key]
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            return False
        if type(x) is not type(y) or x.dtype != y.dtype or x.shape != y.shape:
            return False
        if not torch.equal(x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)):
            return False
    return True


class TemplatedEncoder:
    """`encode_chats(processor, conversations)` with each distinct head processed once (see the module's
    docstring). `calls`, `served` (calls it assembled) and `heads` (heads run through the processor) count its
    work."""

    def __init__(self, processor: Any, max_heads: int = 32):
        self.processor = processor
        self.enabled = True
        self.checked = False
        self.calls = self.served = self.heads = 0
        self.max_heads = max_heads
        self._heads: OrderedDict[tuple, tuple[list[str], torch.Tensor, torch.Tensor | None]] = OrderedDict()

    def __call__(self, conversations: list[list[dict]]) -> Any:
        self.calls += 1
        encoded = self.assemble(conversations) if self.enabled else None
        if encoded is None:
            return encode_chats(self.processor, conversations)
        if not self.checked:
            plain = encode_chats(self.processor, conversations)
            self.checked = True
            if not same_encoding(encoded, plain):
                self.enabled = False
                log.warning("critic: the batch encoded head by head differs from the processor's encoding "
                            "(%s); every batch goes through the processor's call", type(self.processor).__name__)
                return plain
        self.served += 1
        return encoded

    def _placeholders(self) -> list[str]:
        names = ("image_token", "video_token", "audio_token")
        return [t for t in (getattr(self.processor, n, None) for n in names) if isinstance(t, str) and t]

    def assemble(self, conversations: list[list[dict]]) -> BatchFeature | None:
        """The batch's encoding from its distinct heads and rests; None when this batch is not covered."""
        processor = self.processor
        tokenizer = getattr(processor, "tokenizer", None)
        image_token = getattr(processor, "image_token", None)
        if (not conversations or tokenizer is None or tokenizer.pad_token_id is None
                or not isinstance(image_token, str) or not image_token):
            return None
        images = [conversation_images(c) for c in conversations]
        if any(not imgs for imgs in images):
            return None
        texts = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
        placeholders = self._placeholders()
        heads, rests = [], []
        for text in texts:
            cut = text.rfind(image_token)
            if cut < 0:
                return None
            cut += len(image_token)
            if any(p in text[cut:] for p in placeholders):
                return None
            heads.append(text[:cut])
            rests.append(text[cut:])

        groups: dict[tuple, int] = {}  # (head, image objects) -> index of the distinct head
        owner = [groups.setdefault((h, *map(id, imgs)), len(groups)) for h, imgs in zip(heads, images, strict=True)]
        reps = first_rows(owner)
        # the images as the processor's call hands them to its image processor (the tensors, nothing else)
        pictures = processor.image_processor(images=[im for r in reps for im in images[r]], return_tensors="pt")
        if set(pictures.keys()) != set(IMAGE_KEYS) or not isinstance(pictures["pixel_values"], torch.Tensor):
            return None
        grid = pictures["image_grid_thw"]
        rows_per_image = grid.prod(dim=-1)
        counts = [len(images[r]) for r in reps]
        if pictures["pixel_values"].shape[0] != int(rows_per_image.sum()) or grid.shape[0] != sum(counts):
            return None
        extra = {}
        if tokenizer.bos_token is not None and texts[0].startswith(tokenizer.bos_token):
            extra["add_special_tokens"] = False  # as the processor's chat template does
        starts = [0, *itertools.accumulate(counts)]
        head_parts = [self._head(heads[r], grid[starts[g] : starts[g + 1]], images[r], extra)
                      for g, r in enumerate(reps)]
        if any(part is None for part in head_parts):
            return None

        distinct = list(dict.fromkeys(rests))
        dtype = head_parts[0][1].dtype
        rest_ids = [torch.tensor(ids, dtype=dtype) for ids in tokenizer(distinct, add_special_tokens=False)["input_ids"]]
        where = {text: i for i, text in enumerate(distinct)}
        rows = [(head_parts[g][1], rest_ids[where[rest]]) for g, rest in zip(owner, rests, strict=True)]
        return BatchFeature(data=self._batch(head_parts, rows, owner, pictures, counts), tensor_type=None)

    def _head(self, text: str, grid: torch.Tensor, images: list, extra: dict) -> tuple | None:
        """(output keys, ids, token types or None) of a head: the processor's call on it, once per head text and
        image grids (its image tokens follow from the grids); None when its output is not covered."""
        key = (text, tuple(map(tuple, grid.tolist())), tuple(sorted(extra.items())))
        if key in self._heads:
            self._heads.move_to_end(key)
            return self._heads[key]
        try:
            out = self.processor(text=[text], images=[list(images)], return_tensors="pt", **extra)
        except (ValueError, TypeError):  # the processor's call on the whole batch says what is wrong
            return None
        keys = list(out.keys())
        if (not set(keys) <= set(TEXT_KEYS + IMAGE_KEYS) or not {"input_ids", "attention_mask", *IMAGE_KEYS} <= set(keys)
                or not torch.equal(out["image_grid_thw"], grid) or not bool(out["attention_mask"].all())):
            return None
        mm = out["mm_token_type_ids"][0] if "mm_token_type_ids" in out else None
        self.heads += 1
        self._heads[key] = (keys, out["input_ids"][0], mm)
        while len(self._heads) > self.max_heads:
            self._heads.popitem(last=False)
        return self._heads[key]

    def _batch(self, head_parts: list[tuple], rows: list[tuple[torch.Tensor, torch.Tensor]], owner: list[int],
               pictures: Any, counts: list[int]) -> dict[str, torch.Tensor]:
        """Rows padded as the tokenizer pads (its side, its pad id); each row's image rows and grids in row order."""
        tokenizer = self.processor.tokenizer
        keys, ids, mm = head_parts[0]
        lengths = [len(a) + len(b) for a, b in rows]
        width, n = max(lengths), len(rows)
        input_ids = torch.full((n, width), tokenizer.pad_token_id, dtype=ids.dtype)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        types = torch.zeros((n, width), dtype=mm.dtype) if mm is not None else None
        left = tokenizer.padding_side == "left"
        for r, ((head, rest), length) in enumerate(zip(rows, lengths, strict=True)):
            start = width - length if left else 0
            input_ids[r, start : start + len(head)] = head
            input_ids[r, start + len(head) : start + length] = rest
            attention_mask[r, start : start + length] = 1
            if types is not None:
                types[r, start : start + len(head)] = head_parts[owner[r]][2]
        # the distinct heads' images, flattened in order: head g's are the next counts[g]
        starts = [0, *itertools.accumulate(counts)]
        rows_at = [0, *torch.cumsum(pictures["image_grid_thw"].prod(dim=-1), 0).tolist()]
        pieces = {g: torch.arange(rows_at[starts[g]], rows_at[starts[g + 1]]) for g in set(owner)}
        images = [i for g in owner for i in range(starts[g], starts[g + 1])]
        data = {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": types,
                "pixel_values": pictures["pixel_values"][torch.cat([pieces[g] for g in owner])],
                "image_grid_thw": pictures["image_grid_thw"][images]}
        return {key: data[key] for key in keys}
