"""A GRPO-shaped batch for the tiny policy: prompts with two images, each repeated G times, ragged completions."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from coz_train.data.prompts import zoom_prompt
from coz_train.hub import resolve_model
from coz_train.policy import load_processor, load_vlm


def tiny_policy(policy_cfg, lora: bool = True, seed: int = 0):
    """The tiny fp32 policy with the paper's LoRA (B random, dropout off) and its processor."""
    from peft import get_peft_model

    from coz_train.policy import lora_config

    path = resolve_model(policy_cfg.name_or_path, "policy.name_or_path")
    processor = load_processor(path, policy_cfg)
    model = load_vlm(path, policy_cfg).float()
    if lora:
        config = lora_config(policy_cfg, model)
        config.lora_dropout = 0.0
        model = get_peft_model(model, config)
        generator = torch.Generator().manual_seed(seed)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data = torch.randn(param.shape, generator=generator) * 0.5
    return model, processor


def images(seed: int, sizes=((112, 112), (56, 84))) -> list:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def grpo_batch(processor, groups: int = 2, per_group: int = 3, max_completion: int = 6, seed: int = 0,
               image_sizes=None) -> dict:
    """TRL's layout: left-padded prompts + right-padded completions, rows of a group adjacent."""
    from trl.data_utils import prepare_multimodal_messages

    generator = torch.Generator().manual_seed(seed)
    prompts, all_images = [], []
    for g in range(groups):
        sizes = image_sizes[g] if image_sizes else ((112, 112), (56, 84))
        imgs = images(seed * 100 + g, sizes)
        for _ in range(per_group):
            prompts.append(prepare_multimodal_messages(zoom_prompt(), images=imgs))
            all_images.append(imgs)
    processor.tokenizer.padding_side = "left"
    enc = processor.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors="pt", padding=True)
    n = len(prompts)
    vocab = processor.tokenizer.vocab_size
    lengths = torch.randint(2, max_completion + 1, (n,), generator=generator)
    lengths[0] = max_completion
    completion = torch.randint(10, vocab, (n, max_completion), generator=generator)
    completion_mask = (torch.arange(max_completion)[None] < lengths[:, None]).long()
    completion = completion.masked_fill(completion_mask == 0, processor.tokenizer.pad_token_id)
    mm = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(completion)], dim=1)
    return dict(
        input_ids=torch.cat([enc["input_ids"], completion], dim=1),
        attention_mask=torch.cat([enc["attention_mask"], completion_mask], dim=1),
        pixel_values=enc["pixel_values"].float(),
        image_grid_thw=enc["image_grid_thw"],
        mm_token_type_ids=mm,
        logits_to_keep=max_completion,
        num_images=[2] * n,
        images=all_images,
        prompts=prompts,
        prompt_inputs=enc,
    )
