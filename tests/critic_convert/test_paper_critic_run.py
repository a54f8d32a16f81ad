"""`+experiment=grpo_qwen` with the paper's critic config, on tiny stand-ins: the hub-layout InternVL2.5 critic is
converted on first use and scores the first GRPO step."""

import json

import numpy as np
from PIL import Image

from coz_train.train import build_trainer


def test_grpo_qwen_with_the_internvl2_5_critic_reaches_its_first_reward(make_config, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(images / f"{i}.png")
    cfg = make_config(
        "+experiment=grpo_qwen", f"data.image_dir={images}", "policy=tiny_qwen2_5_vl",
        "critic.name_or_path=tiny:internvl2_5", "critic.dtype=float32", "critic.device=cpu",
        # random weights never write a number: score through the logits of the single-token scores 0..9
        "critic.scoring=logits", "critic.score_max=9", "critic.batch_size=2",
        "data.process_size=128", "data.depth=2", "data.max_images=2", "cpu_threads=1",
        "grpo.max_steps=1", "grpo.num_generations=2", "grpo.per_device_train_batch_size=2",
        "grpo.gradient_accumulation_steps=1", "grpo.max_completion_length=6", "grpo.bf16=false",
        "grpo.gradient_checkpointing=false", "grpo.save_steps=1000", "grpo.dataloader_num_workers=0",
        "grpo.warmup_steps=0", "logging.wandb=false",
    )
    assert cfg.critic.backend == "hf" and not cfg.critic.trust_remote_code
    trainer, _ = build_trainer(cfg)
    critic = next(f for f in trainer.reward_funcs if getattr(f, "__name__", "") == "critic")
    model = critic.func.backend.model if hasattr(critic, "func") else critic.backend.model
    assert type(model).__name__ == "InternVLForConditionalGeneration"  # native, converted from the hub layout
    trainer.train()
    logged = [h for h in trainer.state.log_history if "rewards/critic/mean" in h]
    assert logged and 0.0 <= logged[0]["rewards/critic/mean"] <= 1.0
    json.dumps(logged)  # finite numbers
