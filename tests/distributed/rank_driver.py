"""Run by `accelerate launch` from test_multiprocess.py: train the smoke experiment, then let every
rank save what it holds, so the test can compare ranks (this file is test code, not a trainer)."""

import json
import os
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from peft import get_peft_model_state_dict

from coz_train.config import config_dir, register_configs
from coz_train.rewards import register
from coz_train.rewards.phrase import phrase_exclusion_reward
from coz_train.train import build_trainer

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])


def recorded_phrase(prompts=None, completions=None, trainer_state=None, **kwargs):
    """The phrase reward, each rank recording what it computed at which step."""
    values = phrase_exclusion_reward(prompts=prompts, completions=completions)
    with (out / f"rewards.rank{rank}.jsonl").open("a") as f:
        f.write(json.dumps({"step": trainer_state.global_step + 1, "values": values}) + "\n")
    return values


@register("recorded_phrase")
def _build(params, cfg):
    return recorded_phrase


register_configs()
with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
    cfg = compose("config", overrides=[
        "+experiment=smoke", f"output_dir={out / 'run'}", "logging.wandb=false", "grpo.max_steps=4",
        "grpo.save_steps=2", "rewards.phrase_exclusion.weight=0", "+rewards.recorded_phrase.weight=1.0",
        *sys.argv[2:],
    ])
trainer, _ = build_trainer(cfg)
trainer.train()
torch.save(get_peft_model_state_dict(trainer.accelerator.unwrap_model(trainer.model)), out / f"adapter.rank{rank}.pt")
critics = [getattr(f, "func", f) for f in trainer.reward_funcs if getattr(f, "__name__", "") == "critic"]
critic_params = [p for f in critics for p in f.backend.model.parameters()]
(out / f"world.rank{rank}.json").write_text(json.dumps({
    "world_size": trainer.args.world_size,
    "parallel_mode": str(trainer.args.parallel_mode),
    "distributed_type": str(trainer.accelerator.distributed_type),
    "zero_stage": trainer.accelerator.state.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None,
    # a ZeRO-3-partitioned parameter has a ds_id and an empty local tensor
    "critic_partitioned": any(hasattr(p, "ds_id") or p.numel() == 0 for p in critic_params),
    "critic_trainable": any(p.requires_grad for p in critic_params),
    "critic_params": len(critic_params),
    "policy_partitioned": any(hasattr(p, "ds_id") for p in trainer.model.parameters()),
}))
