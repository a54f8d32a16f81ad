"""Short GRPO runs on the tiny models: what trains, what does not, what is saved, and that it learns."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from scipy import stats
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from coz_train.hub import resolve_model
from coz_train.policy.adapters import load_adapter
from coz_train.rewards import register
from coz_train.train import build_trainer

pytestmark = pytest.mark.slow


def model_inputs(processor):
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]
    messages = [{"role": "user", "content": [{"type": "image", "image": im} for im in images]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")


def test_grpo_trains_every_lora_weight_and_no_base_weight(make_config, tmp_path):
    cfg = make_config("+experiment=smoke", "grpo.max_steps=3", "grpo.save_steps=2", "logging.wandb=false")
    trainer, resume = build_trainer(cfg)
    assert resume is None
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    after = dict(model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    assert len(lora) == 2 * 7 * 2  # A and B, 7 projections, 2 layers
    unchanged_lora = [n for n in lora if torch.equal(before[n], after[n])]
    assert not unchanged_lora
    changed_base = [n for n in before if "lora_" not in n and not torch.equal(before[n], after[n])]
    assert not changed_base
    # every reward component is logged on its own beside the total
    logged = trainer.state.log_history[0]
    for name in ("critic", "phrase_exclusion", "repetition"):
        assert f"rewards/{name}/mean" in logged and f"rewards/{name}/std" in logged
    assert "reward" in logged and "critic/unparsable" in logged
    assert (tmp_path / "run" / "checkpoint-2").is_dir()

    # the saved adapter is in the official inference's layout (tests/policy/test_adapters.py loads it there) and
    # loads back here in full with the same outputs
    adapter = tmp_path / "adapter"
    trainer.save_model(str(adapter))
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    for folder in (adapter, tmp_path / "run" / "checkpoint-2"):
        names = list(load_file(str(folder / "adapter_model.safetensors")))
        assert len(names) == 28 and all(n.startswith("base_model.model.model.layers.") for n in names), names[:3]
    base_path = resolve_model(cfg.policy.name_or_path, "policy.name_or_path")
    processor = AutoProcessor.from_pretrained(base_path)
    inputs = model_inputs(processor)
    reloaded = load_adapter(Qwen2_5_VLForConditionalGeneration.from_pretrained(base_path), adapter, is_trainable=False)
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
        got = reloaded(**inputs).logits
        merged = reloaded.merge_and_unload()(**inputs).logits
        base = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_path)(**inputs).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(base, expected, atol=1e-4)  # the adapter does change the model


def even_tokens(prompts=None, completions=None, completion_ids=None, **kwargs):
    """A reward a tiny random policy can move: the fraction of completion tokens with an even id."""
    return [sum(t % 2 == 0 for t in ids) / max(1, len(ids)) for ids in completion_ids]


@register("even_tokens")
def _build_even_tokens(params, cfg):
    return even_tokens


def test_grpo_learns_a_reward_the_tiny_policy_can_move(make_config):
    cfg = make_config(
        "+experiment=smoke", "rewards.critic.weight=0", "rewards.phrase_exclusion.weight=0",
        "rewards.repetition.weight=0", "+rewards.even_tokens.weight=1.0", "grpo.max_steps=60",
        "grpo.learning_rate=3e-2", "grpo.beta=0", "grpo.save_steps=1000", "logging.wandb=false",
    )
    trainer, _ = build_trainer(cfg)
    trainer.train()
    rewards = np.array([h["reward"] for h in trainer.state.log_history if "reward" in h])
    assert np.mean(rewards[:10]) < 0.65  # about half the tokens are even at random
    # Learning, not a lucky window: the step rewards rise along the whole run (a one-sided test of the trend), by a
    # visible amount. Comparing the first and last 10 steps alone hung on about 80 samples each, and the float
    # rounding of a different CPU moved that difference by more than the effect's spread.
    trend = stats.linregress(np.arange(len(rewards)), rewards)
    gain = trend.slope * (len(rewards) - 1)
    assert trend.slope > 0 and trend.pvalue / 2 < 0.001 and gain > 0.1, (gain, trend.pvalue, rewards.round(3).tolist())


def half_unscorable(prompts=None, completions=None, **kwargs):
    """Like a critic that cannot parse every other answer."""
    return [None if i % 2 else 1.0 for i, _ in enumerate(completions)]


@register("half_unscorable")
def _build_half_unscorable(params, cfg):
    return half_unscorable


def test_none_rewards_are_left_out_not_zeroed_and_qwen2_vl_trains(make_config):
    cfg = make_config(
        "+experiment=smoke", "policy.name_or_path=tiny:qwen2_vl", "rewards.critic.weight=0",
        "+rewards.half_unscorable.weight=1.0", "grpo.max_steps=2", "grpo.save_steps=1000", "logging.wandb=false",
    )
    trainer, _ = build_trainer(cfg)
    from transformers import Qwen2VLForConditionalGeneration

    assert isinstance(trainer.model.base_model.model, Qwen2VLForConditionalGeneration)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2 and all(np.isfinite(h["loss"]) for h in logs)
    # the mean is over the scored half only: a None turned into 0 would make it 0.5
    assert all(h["rewards/half_unscorable/mean"] == 1.0 for h in logs)


def test_resume_auto_continues_from_the_newest_checkpoint(make_config, tmp_path):
    overrides = ["+experiment=smoke", "rewards.critic.weight=0", "grpo.save_steps=1", "logging.wandb=false"]
    first, resume = build_trainer(make_config(*overrides, "grpo.max_steps=2"))
    assert resume is None
    first.train()
    trainer, resume = build_trainer(make_config(*overrides, "grpo.max_steps=3", "resume=auto"))
    assert resume is not None and resume.endswith("checkpoint-2")
    trainer.train(resume_from_checkpoint=resume)
    assert trainer.state.global_step == 3
    assert [h["step"] for h in trainer.state.log_history if "reward" in h] == [1, 2, 3]


def released_adapter(cfg, folder):
    """An adapter with known weights in the released checkpoint-10000's format (its config and tensor names)."""
    from peft import get_peft_model

    from coz_train.policy import load_vlm, lora_config
    from coz_train.policy.adapters import make_portable

    model = load_vlm(resolve_model(cfg.policy.name_or_path, "policy.name_or_path"), cfg.policy)
    peft_model = get_peft_model(model, lora_config(cfg.policy, model))
    generator = torch.Generator().manual_seed(11)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.1
    peft_model.save_pretrained(str(folder))
    make_portable(folder, peft_model)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = r"^(model).*\.(q_proj|o_proj|gate_proj|down_proj|k_proj|up_proj|v_proj)$"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.parametrize("perf", ["plain", "fast"])
def test_grpo_starts_from_an_existing_adapter_kept_as_the_reference(make_config, tmp_path, perf):
    overrides = ["+experiment=smoke", "rewards.critic.weight=0", "grpo.max_steps=2", "grpo.save_steps=1000",
                 "logging.wandb=false", f"perf={perf}"]
    saved = released_adapter(make_config(*overrides), tmp_path / "checkpoint-10000")
    trainer, _ = build_trainer(make_config(*overrides, f"policy.init_adapter={tmp_path / 'checkpoint-10000'}"))
    model = trainer.model
    assert not any("visual" in n for n, _ in model.named_parameters() if "lora_" in n)

    def weights(adapter):
        return {n.replace(f".{adapter}.", "."): p.detach().clone() for n, p in model.named_parameters()
                if f".lora_B.{adapter}." in n or f".lora_A.{adapter}." in n}

    start = weights("default")
    assert len(start) == len(saved) == 28
    for name, value in start.items():  # every saved tensor is the starting point
        torch.testing.assert_close(value, saved[name.replace("model.language_model.", "model.")], rtol=0, atol=0)
    assert "ref" in model.peft_config  # TRL keeps the starting adapter frozen as the KL reference
    trainer.train()
    after, ref = weights("default"), weights("ref")
    assert any(not torch.equal(after[n], start[n]) for n in start)
    assert all(torch.equal(ref[n], start[n]) for n in start)
    trainer.save_model(str(tmp_path / "adapter"))
    reloaded = load_adapter(Qwen2_5_VLForConditionalGeneration.from_pretrained(
        resolve_model("tiny:qwen2_5_vl", "policy.name_or_path")), tmp_path / "adapter", is_trainable=False)
    for name, param in reloaded.named_parameters():
        if ".lora_" in name:
            torch.testing.assert_close(param, after[name.replace(".default.", ".")], rtol=0, atol=0)


def test_init_adapter_that_is_not_an_adapter_stops_before_models_load(make_config, tmp_path):
    from coz_train.policy.adapters import AdapterError

    with pytest.raises(AdapterError, match="policy.init_adapter='.*' is not a PEFT adapter folder"):
        build_trainer(make_config("+experiment=smoke", f"policy.init_adapter={tmp_path}"))
