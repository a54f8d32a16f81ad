"""Loading an image-text-to-text model and its processor through transformers' auto classes.

Qwen2.5-VL is the default; Qwen2-VL, Qwen3-VL and other image-text-to-text models load the same
way as long as their chat template takes two images in one user turn. The same function loads
the critic (see `coz_train.rewards.critic`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def torch_dtype(name: str) -> torch.dtype | str:
    if name == "auto":
        return "auto"
    if name not in DTYPES:
        raise ValueError(f"dtype '{name}' is not one of auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


def load_processor(path: str, section: Any) -> Any:
    from transformers import AutoImageProcessor, AutoProcessor

    kwargs: dict[str, Any] = {"revision": section.revision, "trust_remote_code": section.trust_remote_code}
    backend = section.get("image_backend") if hasattr(section, "get") else None
    if backend:  # e.g. "pil": the resampling a checkpoint was trained with (torchvision's bicubic differs from PIL's)
        kwargs["image_processor"] = AutoImageProcessor.from_pretrained(path, backend=backend, **kwargs)
    processor = AutoProcessor.from_pretrained(path, **kwargs)
    set_pixel_budget(processor, section.min_pixels, section.max_pixels)
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def encode_chats(processor: Any, conversations: list) -> Any:
    """Chat conversations (text and images) as one padded batch of model inputs, generation prompt added."""
    return processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt", processor_kwargs={"padding": True})


def set_pixel_budget(processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
    """Qwen-style image budget (pixels per image, hence image tokens per image)."""
    if min_pixels is None and max_pixels is None:
        return
    image_processor = getattr(processor, "image_processor", None)
    size = dict(getattr(image_processor, "size", None) or {})
    if "longest_edge" not in size or "shortest_edge" not in size:
        raise ValueError(
            f"min_pixels/max_pixels apply to Qwen-style image processors; {type(image_processor).__name__} "
            "has no pixel budget: leave them null."
        )
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    image_processor.size = size


def load_vlm(path: str, section: Any, device_map: Any = None) -> torch.nn.Module:
    """The model at `path` through transformers' image-text-to-text auto class. A Qwen2-VL / Qwen2.5-VL model loads
    as the library's class with switchable fast paths, every one off (`coz_train.perf.model`): the library's own
    forward and generate until a `perf` switch is installed on it."""
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING, AutoConfig, AutoModelForImageTextToText

    from coz_train.perf.model import SUPPORTED_MODEL_TYPES, switchable_class

    kwargs: dict[str, Any] = {
        "revision": section.revision,
        "dtype": torch_dtype(section.dtype),
        "trust_remote_code": section.trust_remote_code,
    }
    if section.attn_implementation:
        kwargs["attn_implementation"] = section.attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    config = AutoConfig.from_pretrained(path, revision=section.revision, trust_remote_code=section.trust_remote_code)
    if config.model_type in SUPPORTED_MODEL_TYPES and type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        model_class = switchable_class(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(config)])
        return model_class.from_pretrained(path, config=config, **kwargs)
    return AutoModelForImageTextToText.from_pretrained(path, **kwargs)
