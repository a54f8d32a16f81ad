"""The README's first command, end to end, as a user runs it."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_smoke_experiment_end_to_end(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        # a zoom-pair cache of its own: this run builds it, with its progress bar
        [sys.executable, "-m", "coz_train", "+experiment=smoke", f"hydra.run.dir={run}",
         f"data.cache_dir={tmp_path / 'zoom_pairs'}"],
        capture_output=True, text=True, timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    adapter = run / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "train.log").is_file() and "rewards/critic/mean" in (run / "train.log").read_text()
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-20"]
    assert list((run / "wandb").glob("offline-run-*")), "no wandb offline run"
    assert list((run / "wandb").glob("offline-run-*/files/media/images/samples/pairs_*.png")), "no sample images"
    assert (run / "samples.jsonl").read_text().strip()
    assert len((run / "log_history.jsonl").read_text().splitlines()) >= 20
    assert f"LoRA adapter: {adapter}" in output
    # a console a researcher can read: compact step lines, the full metrics only in train.log, no warnings
    # that the project's own settings cause
    assert "step 20/20  reward " in result.stdout and '"rewards/critic/mean"' not in result.stdout
    assert '"rewards/critic/mean"' in (run / "train.log").read_text()
    assert "FutureWarning" not in output and "pin_memory" not in output, output[-3000:]
    assert "Setting accelerator to CPU" not in output  # DeepSpeed's notice, with no DeepSpeed config in use
    assert "zoom pairs: 100%" in (run / "train.log").read_text()
    assert "\x1b[" not in (run / "train.log").read_text()  # no cursor codes of a progress bar in the log
    # every adapter folder has the project's card, and TRL's draft card is left nowhere
    for folder, step in ((adapter, 20), (run / "checkpoint-10", 10), (run / "checkpoint-20", 20)):
        card = (folder / "README.md").read_text()
        assert "policy.name_or_path: `tiny:qwen2_5_vl`" in card, card
        assert "R = 1 * critic + 0.5 * phrase_exclusion + 0.5 * repetition" in card and "| critic | 1 |" in card
        assert f"GRPO steps: {step} / 20" in card and "python -m coz_train +experiment=smoke" in card
        assert "--vlm_lora_path <this folder>" in card and "- r: 8" in card and "zoom pairs: 12" in card
    assert "final adapter" in (adapter / "README.md").read_text()
    assert not [p for p in run.rglob("README.md") if "huggingface.co/None" in p.read_text()]


def test_unavailable_model_stops_fast_with_advice(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "coz_train", "+experiment=grpo_qwen", f"data.image_dir={images}",
         f"policy.name_or_path={tmp_path / 'no_model'}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert "policy.name_or_path=" in result.stderr and "+experiment=smoke" in result.stderr
    assert "Traceback" not in result.stderr  # an expected error: its message and advice, no traceback
    assert "Loading weights" not in result.stderr
    line = [line for line in result.stderr.splitlines() if line.strip()][-1]  # one line, advice and all
    assert line.startswith("Error: ") and "policy.name_or_path=" in line and "+experiment=smoke" in line
    log = tmp_path / "run" / "train.log"
    assert f"the traceback is in {log}" in line and "Traceback" in log.read_text()


def test_a_run_stopped_by_a_failing_reward_says_why_in_train_log(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "coz_train", "+experiment=smoke", f"hydra.run.dir={run}", "logging.wandb=false",
         "critic=server", "critic.url=http://127.0.0.1:9", "critic.retries=0", "critic.timeout_s=2",
         "reward_failure.retries=0", "reward_failure.on_failure=stop"],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode != 0
    log = (run / "train.log").read_text()
    assert "The run stopped: RewardFailedError" in log and "critic" in log, log[-2000:]
