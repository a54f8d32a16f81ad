"""A short GRPO run trained by the SR-quality reward alone, on the tiny policy and the tiny SD3 backbone."""

import pytest
import torch

from coz_train.train import build_trainer

pytestmark = pytest.mark.slow


def test_grpo_with_sr_quality_logs_the_reward_and_its_parts_and_changes_the_adapter(make_config, tiny_osediff):
    cfg = make_config(
        "+experiment=smoke", "rewards.critic.weight=0", "rewards.phrase_exclusion.weight=0",
        "rewards.repetition.weight=0", "rewards.sr_quality.weight=1", "rewards.sr_quality.reference_aware=true",
        *tiny_osediff, "grpo.max_steps=2", "grpo.save_steps=1000", "logging.wandb=false",
    )
    trainer, _ = build_trainer(cfg)
    model = trainer.model
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2
    for entry in logs:
        assert {"rewards/sr_quality/mean", "rewards/sr_quality/std", "sr_quality/iqa", "sr_quality/niqe",
                "sr_quality/reference", "sr_quality/reference_error"} <= set(entry)
        assert 0.0 <= entry["rewards/sr_quality/mean"] <= 1.0
        assert entry["reward"] == pytest.approx(entry["rewards/sr_quality/mean"])  # the only reward on
    after = dict(model.named_parameters())
    assert [n for n in lora if torch.equal(lora[n], after[n])] == []  # the SR-quality advantage moved every LoRA weight
    assert all(torch.equal(base[n], after[n]) for n in base)
