"""Tiny random VLMs built from config, saved as ordinary model folders.

`tiny:<arch>[@<seed>]` in `policy.name_or_path` or `critic.name_or_path` builds such a model
once into the cache (`$COZ_TRAIN_CACHE`, default `~/.cache/coz_train`) and from then on it is
loaded from that folder by the same `from_pretrained` code as a real checkpoint. The weights are
random (seeded), the tokenizer is trained offline (`coz_train.tiny.tokenizer`), and the image
processor keeps images to a handful of tokens, so a GRPO step takes well under a second on a CPU.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from coz_train.tiny.names import TINY_PREFIX
from coz_train.tiny.tokenizer import build_tokenizer

TINY_VERSION = 2  # bump when the tiny architecture changes so old cache folders are not reused
ARCHITECTURES = ("qwen2_5_vl", "qwen2_vl", "internvl2_5")  # internvl2_5: the hub layout (coz_train.tiny.internvl2_5)


def cache_root() -> Path:
    return Path(os.environ.get("COZ_TRAIN_CACHE", Path.home() / ".cache" / "coz_train"))


def parse_tiny(name: str) -> tuple[str, int]:
    """`tiny:qwen2_5_vl@1` -> ("qwen2_5_vl", 1)."""
    spec = name[len(TINY_PREFIX):]
    arch, _, seed = spec.partition("@")
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown tiny model '{name}': use tiny:<arch>[@seed] with arch in {ARCHITECTURES}.")
    try:
        return arch, int(seed) if seed else 0
    except ValueError:
        raise ValueError(f"Bad seed in tiny model name '{name}': expected an integer after '@'.") from None


def special_token_ids(tokenizer) -> dict:
    """The vision special tokens of the offline tokenizer, as model config fields."""
    tid = tokenizer.convert_tokens_to_ids
    return dict(
        image_token_id=tid("<|image_pad|>"),
        video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"),
        vision_end_token_id=tid("<|vision_end|>"),
    )


def qwen_vl_processor(arch: str, tokenizer, min_pixels: int, max_pixels: int):
    """A Qwen2-VL / Qwen2.5-VL processor around the offline tokenizer (no hub)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as Processor
    else:
        from transformers import Qwen2VLProcessor as Processor
    pixels = dict(min_pixels=min_pixels, max_pixels=max_pixels)
    return Processor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


def qwen_vl_config(arch: str, tokenizer, text: dict, vision: dict, **extra):
    """A Qwen-VL config with the offline tokenizer's special tokens; `text`/`vision` set the widths."""
    tid = tokenizer.convert_tokens_to_ids
    text = dict(
        dict(bos_token_id=tid("<|endoftext|>"), eos_token_id=tid("<|im_end|>"), pad_token_id=tid("<|endoftext|>")),
        **text,
    )
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config
    else:
        from transformers import Qwen2VLConfig as Config
    return Config(text_config=text, vision_config=vision, **special_token_ids(tokenizer), **extra)


def _build(arch: str, seed: int, out_dir: Path) -> None:
    if arch == "internvl2_5":
        from coz_train.tiny import internvl2_5

        internvl2_5.build(out_dir, seed)
        return
    tokenizer = build_tokenizer()
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        # Larger than the usual 0.02 so that a 32-wide model has logits a LoRA can actually move.
        initializer_range=0.2,
        # M-RoPE: (temporal, height, width) sections must sum to head_dim / 2 = 4
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
    )
    vision = dict(depth=2, num_heads=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration as Model

        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=32, window_size=56, fullatt_block_indexes=[1])
    else:
        from transformers import Qwen2VLForConditionalGeneration as Model

        vision.update(embed_dim=32, hidden_size=32, mlp_ratio=2)
    config = qwen_vl_config(arch, tokenizer, text, vision)
    torch.manual_seed(seed)
    model = Model(config)
    processor = qwen_vl_processor(arch, tokenizer, 56 * 56, 112 * 112)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def build_once(out_dir: Path, marker: str, build: Callable[[Path], None]) -> str:
    """Build into a private temp folder and rename it into place, unless `out_dir/marker` exists.

    The rename is atomic, so a half-written folder is never picked up; when several processes
    (ranks) build at once, the first rename wins and the others use its folder.
    """
    if not (out_dir / marker).is_file():
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.with_name(f"{out_dir.name}.tmp{os.getpid()}")
        try:
            build(tmp)
            tmp.rename(out_dir)
        except OSError:
            if not (out_dir / marker).is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(out_dir)


def ensure_tiny_model(name: str) -> str:
    """Build the tiny model named `tiny:<arch>[@seed]` if needed; return its folder."""
    arch, seed = parse_tiny(name)
    out_dir = cache_root() / "tiny" / f"{arch}-seed{seed}-v{TINY_VERSION}"
    return build_once(out_dir, "config.json", lambda folder: _build(arch, seed, folder))
