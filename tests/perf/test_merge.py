"""Base weights kept bit for bit across LoRA merges (ours and TRL's vLLM weight sync)."""

from __future__ import annotations

import torch

from coz_train.perf.merge import kept_base_weights, lora_layers


def base_weights(model):
    return [layer.get_base_layer().weight.detach().clone() for layer in lora_layers(model)]


def test_a_peft_merge_and_unmerge_in_bfloat16_leaves_the_weights_as_they_were(make_policy):
    """What TRL's vLLM sync does each step (merge_adapter, then unmerge_adapter), inside kept_base_weights."""
    model, _ = make_policy()
    model.to(torch.bfloat16)
    before = base_weights(model)
    model.merge_adapter()
    model.unmerge_adapter()
    drifted = base_weights(model)
    assert not all(torch.equal(a, b) for a, b in zip(before, drifted, strict=True))  # the drift being guarded
    for layer, weight in zip(lora_layers(model), before, strict=True):
        layer.get_base_layer().weight.data.copy_(weight)
    with kept_base_weights(model):
        model.merge_adapter()
        model.unmerge_adapter()
    assert all(torch.equal(a, b) for a, b in zip(before, base_weights(model), strict=True))


def test_the_trainer_guards_a_weight_sync_that_merges_and_unmerges(make_config):
    """The trainer wraps TRL's vLLM `sync_weights` (not installed here: a sync doing what TRL's does stands in)."""
    from types import SimpleNamespace

    from coz_train.perf.trl_seams import vllm_base_weights
    from coz_train.train import build_trainer

    trainer, _ = build_trainer(make_config("+experiment=smoke", "logging.wandb=false"))
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.to(torch.bfloat16)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()

    def sync_weights():
        model.merge_adapter()
        model.unmerge_adapter()

    trainer.vllm_generation = SimpleNamespace(sync_weights=sync_weights)
    vllm_base_weights(trainer)
    before = base_weights(model)
    trainer.vllm_generation.sync_weights()
    assert all(torch.equal(a, b) for a, b in zip(before, base_weights(model), strict=True))
