"""The tiny policy for the perf tests; GRPO-shaped batches come from `coz_train.bench.workload.grpo_batch`."""

from __future__ import annotations

import torch

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


def permute_rows(batch: dict, permutation) -> dict:
    """The batch with row i taken from row permutation[i]; each row's images move with it."""
    permutation = [int(i) for i in permutation]
    grids = torch.split(batch["image_grid_thw"], batch["num_images"])
    pixels = torch.split(batch["pixel_values"], [int(g.prod(-1).sum()) for g in grids])
    out = dict(batch)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        out[key] = batch[key][permutation]
    out["pixel_values"] = torch.cat([pixels[i] for i in permutation])
    out["image_grid_thw"] = torch.cat([grids[i] for i in permutation])
    out["num_images"] = [batch["num_images"][i] for i in permutation]
    out["images"] = [batch["images"][i] for i in permutation]
    out["prompts"] = [batch["prompts"][i] for i in permutation]
    out["completion_text"] = [batch["completion_text"][i] for i in permutation]
    return out
