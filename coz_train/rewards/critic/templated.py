"""The critic's batch encoded with each shared head processed once (`perf.text_cache` on an `hf` critic).

`HFCritic.encode` hands the batch to the processor's chat template: B x G conversations, each the same two
images and the instruction around one candidate prompt, every one templated, its image placeholders expanded
(648 image tokens per row at the paper's setting) and tokenized whole, about 100 ms of CPU per 64-row call,
almost all of it the same head (system turn, user turn, the images' tokens) again and again.

`TemplatedEncoder(processor)(conversations)` renders the template for every row (strings, cheap), cuts each
rendered text right after its last image placeholder into a head and a rest, runs the processor once on the
distinct heads with their images (image preprocessing, placeholder expansion, tokenization), tokenizes each
distinct rest (the instruction with the candidate, the generation prompt) with the tokenizer alone, and
assembles the batch: the keys, token ids, attention mask, token types, pixel values and grids of the
processor's call on the whole batch, bit for bit.

Why that is exact: the cut follows an added token (the image placeholder), and a tokenizer splits its input
at added tokens before normalising, pre-tokenizing and merging the pieces between them one by one, so a
text's ids are its head's ids followed by its rest's. Qwen-style image processors (`pixel_values` rows per
image and `image_grid_thw`) process each image on its own, so a row's pixel rows are its images' wherever
they were processed. Checked, not assumed: the first batch is also encoded the processor's way and compared
(a difference, e.g. a tokenizer that appends an end token, turns the encoder off for good, with a warning),
and a batch it does not cover (another conversation layout, a multimodal placeholder in a rest, image outputs
other than rows and grids) goes to the processor's call as it is.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers.feature_extraction_utils import BatchFeature

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
    docstring). `calls`, `served` (calls it assembled) and `heads` (processor rows) count its work."""

    def __init__(self, processor: Any):
        self.processor = processor
        self.enabled = True
        self.checked = False
        self.calls = self.served = self.heads = 0

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
        if not conversations or tokenizer is None or not isinstance(image_token, str) or not image_token:
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
        first = {g: r for r, g in reversed(list(enumerate(owner)))}
        reps = [first[g] for g in range(len(groups))]
        extra = {}
        if tokenizer.bos_token is not None and texts[0].startswith(tokenizer.bos_token):
            extra["add_special_tokens"] = False  # as the processor's chat template does
        try:
            head = processor(text=[heads[r] for r in reps], images=[list(images[r]) for r in reps], padding=True,
                             return_tensors="pt", **extra)
        except (ValueError, TypeError):  # the processor's call on the whole batch says what is wrong
            return None
        keys = list(head.keys())
        if not (set(keys) <= set(TEXT_KEYS + IMAGE_KEYS) and {"input_ids", "attention_mask", *IMAGE_KEYS} <= set(keys)):
            return None
        grid, pixels = head["image_grid_thw"], head["pixel_values"]
        rows_per_image = grid.prod(dim=-1)
        if (not isinstance(pixels, torch.Tensor) or pixels.shape[0] != int(rows_per_image.sum())
                or grid.shape[0] != sum(len(images[r]) for r in reps) or tokenizer.pad_token_id is None):
            return None
        self.heads += len(reps)

        distinct = list(dict.fromkeys(rests))
        rest_ids = [torch.tensor(ids, dtype=head["input_ids"].dtype)
                    for ids in tokenizer(distinct, add_special_tokens=False)["input_ids"]]
        where = {text: i for i, text in enumerate(distinct)}
        mask = head["attention_mask"].bool()
        head_ids = [head["input_ids"][g][mask[g]] for g in range(len(reps))]
        head_mm = [head["mm_token_type_ids"][g][mask[g]] for g in range(len(reps))] if "mm_token_type_ids" in head else None
        rows = [(head_ids[g], rest_ids[where[rest]]) for g, rest in zip(owner, rests, strict=True)]
        counts = [len(images[r]) for r in reps]
        return BatchFeature(data=self._batch(keys, head, rows, owner, head_mm, rows_per_image, counts),
                            tensor_type=None)

    def _batch(self, keys: list[str], head: Any, rows: list[tuple[torch.Tensor, torch.Tensor]], owner: list[int],
               head_mm: list[torch.Tensor] | None, rows_per_image: torch.Tensor,
               counts: list[int]) -> dict[str, torch.Tensor]:
        """Rows padded as the tokenizer pads (its side, its pad id); each row's image rows and grids in row order."""
        tokenizer = self.processor.tokenizer
        lengths = [len(a) + len(b) for a, b in rows]
        width, n = max(lengths), len(rows)
        ids_dtype = head["input_ids"].dtype
        input_ids = torch.full((n, width), tokenizer.pad_token_id, dtype=ids_dtype)
        attention_mask = torch.zeros((n, width), dtype=head["attention_mask"].dtype)
        mm = torch.zeros((n, width), dtype=head["mm_token_type_ids"].dtype) if head_mm is not None else None
        left = tokenizer.padding_side == "left"
        for r, ((h, rest), length) in enumerate(zip(rows, lengths, strict=True)):
            start = width - length if left else 0
            input_ids[r, start : start + len(h)] = h
            input_ids[r, start + len(h) : start + length] = rest
            attention_mask[r, start : start + length] = 1
            if mm is not None:
                mm[r, start : start + len(h)] = head_mm[owner[r]]
        # the distinct heads' images, flattened in order: head g's are the next len(its images)
        images_of, image = [], 0
        for count in counts:
            images_of.append(list(range(image, image + count)))
            image += count
        starts = [0, *torch.cumsum(rows_per_image, 0).tolist()]
        pieces = {g: torch.cat([torch.arange(starts[i], starts[i + 1]) for i in images_of[g]]) for g in set(owner)}
        index = torch.cat([pieces[g] for g in owner])
        images = [i for g in owner for i in images_of[g]]
        data = {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm,
                "pixel_values": head["pixel_values"][index], "image_grid_thw": head["image_grid_thw"][images]}
        return {key: data[key] for key in keys}
