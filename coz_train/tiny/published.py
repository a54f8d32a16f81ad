"""The published configs of the real models that `random:<hub id>` builds (see `coz_train.tiny.random_models`).

Transcribed by hand from the `config.json`, `preprocessor_config.json` and `generation_config.json` that
Qwen/Qwen2.5-VL-3B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct publish on the Hugging Face hub (nothing is
downloaded here). The architecture-defining values (widths, depths, heads, vocabulary rows, vision tower,
M-RoPE sections, special token ids, tied embeddings) are cross-checked by the tests: the models built from
them on the meta device have the published parameter counts, 3.75B and 8.29B. The sampling values of the
generation configs do not matter here (TRL builds its own for rollouts; the critic decodes greedily); the
repetition penalty does (the critic's greedy decoding applies it).
"""

from __future__ import annotations

import copy
from typing import Any

# Qwen2's special tokens after the 151,643 ordinary byte-level BPE tokens (tokenizer_config.json's
# added_tokens_decoder); the embedding has more rows than the tokenizer has tokens (151,936 / 152,064).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
FIRST_SPECIAL_ID = 151643  # <|endoftext|>; <|im_end|> is 151645, <|image_pad|> 151655

_VISION = {
    "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
    "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2,
}
_COMMON = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
    "initializer_range": 0.02, "max_position_embeddings": 128000, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "use_sliding_window": False, "use_cache": True, "torch_dtype": "bfloat16",
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}
CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-VL-3B-Instruct": dict(
        _COMMON, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=2, max_window_layers=70, tie_word_embeddings=True, vocab_size=151936,
        vision_config=dict(_VISION, out_hidden_size=2048)),
    "Qwen/Qwen2.5-VL-7B-Instruct": dict(
        _COMMON, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, max_window_layers=28, tie_word_embeddings=False, vocab_size=152064,
        vision_config=dict(_VISION, out_hidden_size=3584)),
}
# the same file for both models
PREPROCESSOR = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
}
GENERATION = {
    "bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1,
}
# parameters of the models built from CONFIGS (tied embeddings counted once): the published sizes
PARAMETERS = {"Qwen/Qwen2.5-VL-3B-Instruct": 3_754_622_976, "Qwen/Qwen2.5-VL-7B-Instruct": 8_292_166_656}


def published_config(hub_id: str, layers: int | None = None) -> dict[str, Any]:
    """A copy of the model's published config; with `layers`, that many language-model layers and vision blocks
    (the widths unchanged; the vision tower keeps its last block full attention, as every 8th is)."""
    if hub_id not in CONFIGS:
        raise ValueError(f"No published config ships for '{hub_id}': random:<hub id> knows {sorted(CONFIGS)}.")
    config = copy.deepcopy(CONFIGS[hub_id])
    if layers is not None:
        vision = config["vision_config"]
        config["num_hidden_layers"] = config["max_window_layers"] = layers
        vision["fullatt_block_indexes"] = [i for i in vision["fullatt_block_indexes"] if i < layers] or [layers - 1]
        vision["depth"] = layers
    return config
