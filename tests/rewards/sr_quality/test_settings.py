"""`rewards.sr_quality.*` is checked at start-up: off by default, and every bad setting refused with its key."""

import pytest
from omegaconf import OmegaConf

from coz_train.rewards import active_rewards, critic_needed
from coz_train.rewards.sr_quality import check_settings
from coz_train.train import build_trainer


def test_off_by_default_and_its_defaults_are_the_schema(make_config):
    cfg = make_config()
    assert cfg.rewards.sr_quality.weight == 0.0
    assert "sr_quality" not in [name for name, _, _ in active_rewards(cfg.rewards, cfg)]
    params = OmegaConf.to_container(cfg.rewards.sr_quality)
    params.pop("weight")
    params["backbone"]["lora_dir"] = "."
    settings = check_settings(params, cfg)
    assert (settings.metric, settings.metric_range, settings.part_weights()) == ("niqe", (0.0, 20.0), {"iqa": 1.0})


@pytest.mark.parametrize("name", ["realesrgan_x4plus", "bicubic", "nearest"])
def test_a_prompt_agnostic_backbone_is_refused_before_any_model_loads(make_config, name):
    cfg = make_config("+experiment=smoke", "rewards.sr_quality.weight=1", f"rewards.sr_quality.backbone.name={name}")
    with pytest.raises(ValueError, match=rf"rewards.sr_quality.backbone.name={name} ignores its prompt.*zero advantage"):
        build_trainer(cfg)


@pytest.mark.parametrize(("override", "message"), [
    ("rewards.sr_quality.metric=psnr", r"rewards.sr_quality.metric='psnr' is not a no-reference metric"),
    ("rewards.sr_quality.range=[5,1]", r"rewards.sr_quality.range=\[5.0, 1.0\] must be \[lo, hi\]"),
    ("rewards.sr_quality.reference_tolerance=0", r"reference_tolerance=0.0 must be > 0"),
    ("rewards.sr_quality.critic_weight=-1", r"critic_weight=-1.0 must be >= 0"),
    ("rewards.sr_quality.batch_size=0", r"batch_size=0 must be >= 1"),
    ("rewards.sr_quality.device=gpu", r"rewards.sr_quality.device='gpu' is not auto, cpu or cuda"),
    ("rewards.sr_quality.reference_aware=maybe", r"rewards.sr_quality.reference_aware: Value 'maybe' is not a valid bool"),
    ("+rewards.sr_quality.backbone.lora_path=/x", r"rewards.sr_quality.backbone.lora_path: Key 'lora_path' not in"),
    ("rewards.sr_quality.backbone.name=esrgan", r"rewards.sr_quality.backbone.name='esrgan' is not one of"),
    ("data.single_image_prompt=true", r"data.single_image_prompt=true"),
])
def test_bad_settings_name_their_key(make_config, tmp_path, override, message):
    cfg = make_config("+experiment=smoke", "rewards.sr_quality.weight=1",
                      f"rewards.sr_quality.backbone.lora_dir={tmp_path}", override)
    with pytest.raises((ValueError, KeyError), match=message):
        active_rewards(cfg.rewards, cfg)


def test_osediff_needs_its_lora_folder(make_config, tmp_path):
    cfg = make_config("+experiment=smoke", "rewards.sr_quality.weight=1")
    with pytest.raises(ValueError, match="rewards.sr_quality.backbone.lora_dir is not set"):
        active_rewards(cfg.rewards, cfg)
    cfg = make_config("+experiment=smoke", "rewards.sr_quality.weight=1",
                      f"rewards.sr_quality.backbone.lora_dir={tmp_path / 'missing'}")
    with pytest.raises(FileNotFoundError, match="rewards.sr_quality.backbone.lora_dir=.*missing is not a folder"):
        active_rewards(cfg.rewards, cfg)


def test_a_misspelt_parameter_is_named(make_config):
    cfg = make_config("+experiment=smoke", "rewards.sr_quality.weight=1", "+rewards.sr_quality.metirc=musiq")
    with pytest.raises(KeyError, match=r"rewards.sr_quality: unknown parameter\(s\) \['metirc'\]"):
        active_rewards(cfg.rewards, cfg)


def test_the_critic_judge_counts_as_a_critic_user(make_config, tmp_path):
    cfg = make_config("+experiment=smoke", "rewards.critic.weight=0", "rewards.sr_quality.weight=1",
                      f"rewards.sr_quality.backbone.lora_dir={tmp_path}")
    assert not critic_needed(active_rewards(cfg.rewards, cfg))
    cfg.rewards.sr_quality.critic_judge = True
    assert critic_needed(active_rewards(cfg.rewards, cfg))
