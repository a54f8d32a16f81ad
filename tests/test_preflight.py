"""A run's cheap checks run before any model library loads, and name every missing model in one error."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coz_train.hub import ModelNotAvailableError
from coz_train.preflight import preflight, run_models

PAPER = ["+experiment=grpo_qwen", "data.image_dir=/nonexistent-images", "logging.wandb=false"]


def test_every_missing_model_is_named_in_one_error(make_config, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_config(*PAPER, "policy.name_or_path=Org/not-cached-policy", "critic.name_or_path=Org/not-cached-critic")
    with pytest.raises(ModelNotAvailableError) as err:
        preflight(cfg)
    text = str(err.value)
    assert text.startswith("2 models of this run cannot be loaded.")
    assert "policy.name_or_path='Org/not-cached-policy'" in text and "critic.name_or_path='Org/not-cached-critic'" in text
    assert "hf download Org/not-cached-policy" in text and "hf download Org/not-cached-critic" in text


def test_one_missing_model_is_its_own_error(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_config("+experiment=smoke", "logging.wandb=false", f"policy.name_or_path={tmp_path / 'absent'}")
    with pytest.raises(ModelNotAvailableError, match=r"^policy.name_or_path='.*absent' cannot be loaded: .*no config.json"):
        preflight(cfg)


def test_the_critic_is_checked_only_when_a_weighted_reward_loads_it(make_config):
    names = lambda cfg: [key for key, _, _ in run_models(cfg)]  # noqa: E731
    assert names(make_config("+experiment=smoke")) == ["policy.name_or_path", "critic.name_or_path"]
    assert names(make_config("+experiment=smoke", "rewards.critic.weight=0")) == ["policy.name_or_path"]
    assert names(make_config("+experiment=smoke", "critic=server", "critic.url=http://127.0.0.1:9")) == [
        "policy.name_or_path"]
    with pytest.raises(ValueError, match="critic.backend=server needs critic.url"):
        preflight(make_config("+experiment=smoke", "critic=server", "critic.url=null"))


def test_counts_are_checked_first(make_config, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="grpo.max_steps=0 must be positive"):
        preflight(make_config(*PAPER, "grpo.max_steps=0"))


def test_a_failing_run_stops_before_torch_is_imported(tmp_path):
    """The command itself: a missing model answers before any model library is imported (the traceback in the
    run's log shows which modules had loaded)."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['coz_train', '+experiment=grpo_qwen', 'data.image_dir=/nonexistent', 'logging.wandb=false',\n"
        f"            'hydra.run.dir={tmp_path}']\n"
        "try:\n"
        "    runpy.run_module('coz_train', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'deepspeed', 'bitsandbytes', 'diffusers')\n"
        "             if m in sys.modules]\n"
        "    print('exit', exit.code, 'heavy', heavy)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert "exit 1 heavy []" in done.stdout, done.stdout + done.stderr
    assert "policy.name_or_path='Qwen/Qwen2.5-VL-3B-Instruct'" in done.stderr
    assert "critic.name_or_path='OpenGVLab/InternVL2_5-8B'" in done.stderr
