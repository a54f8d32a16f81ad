"""The benchmark's models and batches: random weights of the real architectures, built from config.

`real` is the paper's setting: a Qwen2.5-VL-3B policy with the paper's LoRA, a Qwen2.5-VL-7B
critic, 8 prompts x 8 completions of 64 tokens, two 504-px images per prompt (324 image tokens
each). `mid` has the real widths and image size with two layers (a CPU check of every real
shape); `tiny` keeps the shapes' structure at CPU size. Nothing is downloaded: the tokenizer is the
offline one (`coz_train.tiny.tokenizer`), with the real vocabulary size in the `real` models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from coz_train.data.prompts import zoom_prompt
from coz_train.policy.load import encode_chats
from coz_train.tiny.models import qwen_vl_config, qwen_vl_processor
from coz_train.tiny.tokenizer import build_tokenizer

_VISION_REAL = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
                    in_channels=3, hidden_act="silu", tokens_per_second=2)
_VISION_TINY = dict(_VISION_REAL, depth=2, hidden_size=32, intermediate_size=64, num_heads=4, window_size=56,
                    fullatt_block_indexes=[1])
_TEXT_COMMON = dict(hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6, attention_dropout=0.0)

SIZES: dict[str, dict[str, Any]] = {
    "real": dict(
        policy=dict(text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                              num_attention_heads=16, num_key_value_heads=2, mrope_section=[16, 24, 24]),
                    vision=dict(_VISION_REAL, out_hidden_size=2048), tie=True),
        critic=dict(text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                              num_attention_heads=28, num_key_value_heads=4, mrope_section=[16, 24, 24]),
                    vision=dict(_VISION_REAL, out_hidden_size=3584), tie=False),
        groups=8, generations=8, new_tokens=64, image_size=504, warmup=1, reps=3,
    ),
    # the real widths, vocabularies and image size with two layers per tower and a small batch: every real
    # shape on a CPU in a few minutes (timings meaningless)
    "mid": dict(
        policy=dict(text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=2,
                              num_attention_heads=16, num_key_value_heads=2, mrope_section=[16, 24, 24]),
                    vision=dict(_VISION_REAL, depth=2, fullatt_block_indexes=[1], out_hidden_size=2048), tie=True),
        critic=dict(text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=2,
                              num_attention_heads=28, num_key_value_heads=4, mrope_section=[16, 24, 24]),
                    vision=dict(_VISION_REAL, depth=2, fullatt_block_indexes=[1], out_hidden_size=3584), tie=False),
        groups=2, generations=2, new_tokens=8, image_size=504, warmup=0, reps=1,
    ),
    # initializer_range 0.02 x sqrt(real width / tiny width): the real models' activation scale, so that attention
    # depends on positions as in the real models and the negative controls (positions shifted by one) are far off
    "tiny": dict(
        policy=dict(text=dict(vocab_size=None, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, mrope_section=[2, 3, 3],
                              initializer_range=0.11),
                    vision=dict(_VISION_TINY, out_hidden_size=64), tie=True),
        critic=dict(text=dict(vocab_size=None, hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                              num_attention_heads=6, num_key_value_heads=2, mrope_section=[2, 3, 3],
                              initializer_range=0.12),
                    vision=dict(_VISION_TINY, out_hidden_size=96), tie=False),
        groups=2, generations=4, new_tokens=8, image_size=112, warmup=1, reps=2,
    ),
}


@dataclass
class Shape:
    groups: int
    generations: int
    new_tokens: int
    image_size: int
    warmup: int
    reps: int


def shape_of(bench: Any) -> Shape:
    if bench.size not in SIZES:
        raise ValueError(f"bench.size='{bench.size}' is not one of {sorted(SIZES)}.")
    default = SIZES[bench.size]
    values = {k: bench[k] if bench[k] is not None else default[k]
              for k in ("groups", "generations", "new_tokens", "image_size", "warmup", "reps")}
    if values["image_size"] % 28:
        raise ValueError(f"bench.image_size={values['image_size']} must be a multiple of 28 (patch 14 x merge 2).")
    return Shape(**values)


def build_model(spec: dict, tokenizer: Any, device: torch.device, dtype: torch.dtype, seed: int) -> Any:
    """Random weights of a Qwen2.5-VL architecture, built on the device as `load_vlm` loads one (the library's class
    with switchable fast paths, all off: `coz_train.perf.model`)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from coz_train.perf.model import switchable_class

    text = dict(_TEXT_COMMON, **{k: v for k, v in spec["text"].items() if k != "mrope_section"})
    text["vocab_size"] = text["vocab_size"] or len(tokenizer)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": spec["text"]["mrope_section"]}
    config = qwen_vl_config("qwen2_5_vl", tokenizer, text, dict(spec["vision"]), tie_word_embeddings=spec["tie"])
    torch.manual_seed(seed)
    with torch.device(device):
        model = switchable_class(Qwen2_5_VLForConditionalGeneration)._from_config(config, dtype=dtype,
                                                                                  attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


def processor_for(shape: Shape) -> Any:
    pixels = shape.image_size * shape.image_size
    return qwen_vl_processor("qwen2_5_vl", build_tokenizer(), pixels, pixels)


def images(seed: int, sizes: tuple = ((112, 112), (112, 112))) -> list:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def grpo_batch(processor: Any, groups: int = 2, per_group: int = 3, max_completion: int = 6, seed: int = 0,
               image_sizes: list | None = None, ragged: bool = True, device: Any = "cpu") -> dict:
    """A generation batch as TRL lays it out: each prompt (system text + two images) repeated per_group
    times in adjacent rows, left-padded prompts, right-padded random completions (lengths 2..max when
    ragged), the multimodal fields of the processor."""
    from trl.data_utils import prepare_multimodal_messages

    generator = torch.Generator().manual_seed(seed)
    prompts, all_images = [], []
    for g in range(groups):
        imgs = images(seed * 100 + g, image_sizes[g] if image_sizes else ((112, 112), (56, 84)))
        for _ in range(per_group):
            row = [image.copy() for image in imgs]  # each row decoded on its own, as dataset rows are
            prompts.append(prepare_multimodal_messages(zoom_prompt(), images=row))
            all_images.append(row)
    processor.tokenizer.padding_side = "left"
    enc = encode_chats(processor, prompts)
    n = len(prompts)
    tokenizer = processor.tokenizer
    if ragged:
        lengths = torch.randint(min(2, max_completion), max_completion + 1, (n,), generator=generator)
        lengths[0] = max_completion
    else:
        lengths = torch.full((n,), max_completion)
    completion = torch.randint(10, tokenizer.vocab_size, (n, max_completion), generator=generator)
    completion_mask = (torch.arange(max_completion)[None] < lengths[:, None]).long()
    completion = completion.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    batch = dict(
        input_ids=torch.cat([enc["input_ids"], completion], dim=1),
        attention_mask=torch.cat([enc["attention_mask"], completion_mask], dim=1),
        pixel_values=enc["pixel_values"],
        image_grid_thw=enc["image_grid_thw"],
        mm_token_type_ids=torch.cat([enc["mm_token_type_ids"], torch.zeros_like(completion)], dim=1),
    )
    batch = {k: v.to(device) for k, v in batch.items()}
    batch.update(logits_to_keep=max_completion, num_images=[2] * n, images=all_images, prompts=prompts,
                 completion_text=tokenizer.batch_decode(completion, skip_special_tokens=True))
    return batch


def rows(batch: dict, start: int, end: int) -> dict:
    """Rows [start, end) of a batch's model inputs (two images per row)."""
    grid = batch["image_grid_thw"]
    per_image = grid.prod(-1)
    first = int(per_image[: 2 * start].sum())
    last = first + int(per_image[2 * start : 2 * end].sum())
    return dict(
        input_ids=batch["input_ids"][start:end],
        attention_mask=batch["attention_mask"][start:end],
        pixel_values=batch["pixel_values"][first:last],
        image_grid_thw=grid[2 * start : 2 * end],
        mm_token_type_ids=batch["mm_token_type_ids"][start:end],
    )
