import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from coz_train.config import config_dir
from coz_train.data import check_data_config

EXPERIMENTS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))


def test_experiments_exist():
    assert {"smoke", "grpo_qwen"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(make_config, name):
    cfg = make_config(f"+experiment={name}", "data.image_dir=/data/images", "eval.image_dir=/data/eval")
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert cfg.experiment_name == name


def test_paper_recipe_values(make_config):
    cfg = make_config("+experiment=grpo_qwen", "data.image_dir=/data")
    assert cfg.policy.name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert cfg.critic.name_or_path == "OpenGVLab/InternVL2_5-8B"
    assert (cfg.policy.lora.r, cfg.policy.lora.lora_alpha, cfg.policy.lora.lora_dropout) == (8, 32, 0.05)
    assert cfg.grpo.max_completion_length == 32 and cfg.grpo.max_steps == 10000
    assert cfg.data.process_size == 512 and cfg.data.scale == 4 and cfg.data.depth == 4
    assert make_config("+experiment=grpo_qwen", "data.image_dir=/d", "critic=qwen2_5_vl_7b").critic.name_or_path == (
        "Qwen/Qwen2.5-VL-7B-Instruct"
    )


def test_paper_recipe_requires_data(make_config):
    cfg = make_config("+experiment=grpo_qwen")
    with pytest.raises(ValueError, match="data.image_dir"):
        check_data_config(cfg.data)
    check_data_config(make_config("+experiment=grpo_qwen", "data.dataset=some/dataset").data)


def test_overrides_reach_trl_fields_by_their_names(make_config):
    cfg = make_config("+experiment=smoke", "grpo.num_generations=2", "grpo.epsilon_high=0.28", "grpo.loss_type=dr_grpo",
                      "rewards.critic.weight=0")
    assert cfg.grpo.num_generations == 2 and cfg.grpo.epsilon_high == 0.28 and cfg.grpo.loss_type == "dr_grpo"
    assert cfg.rewards.critic.weight == 0


@pytest.mark.parametrize(
    "override",
    ["grpo.num_generatons=4", "data.procesize=3", "policy.lora.rank=4", "grpo.num_generations=many", "data.depth=2.5"],
)
def test_misspelt_keys_and_wrong_types_are_rejected(make_config, override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)):
        make_config("+experiment=smoke", override)


def test_seed_reaches_trl(make_config):
    cfg = make_config("+experiment=smoke", "seed=7")
    assert cfg.grpo.seed == 7 and cfg.grpo.data_seed == 7


def test_cli_rejects_a_bad_key_before_loading_anything(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "coz_train", "+experiment=smoke", "grpo.num_generatons=4", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "num_generatons" in result.stderr
    assert "Loading weights" not in result.stderr + result.stdout
