"""Evaluation during training: it runs at the configured steps with the live adapter, writes its tables and
figures, stays out of the step time and the random stream, survives its own failure, and a broken or
training-image config stops the run before any model loads."""

from __future__ import annotations

import csv
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from coz_train.eval.during_training import SECTION, evaluation_mode
from coz_train.sr.backbones.resample import Resampler
from coz_train.train import build_trainer

SMOKE = ("+experiment=smoke", "grpo.max_steps=4", "grpo.save_steps=10", "eval_during_training.every=2")
SLEEP_S = 1.5  # per backbone call; 2 calls (steps) per evaluation


class ModeRecorder(TrainerCallback):
    """Runs after the evaluation's callback: the policy's mode when the optimizer step is over."""

    def __init__(self) -> None:
        self.training: dict[int, bool] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.training[state.global_step] = model.training


@pytest.fixture(scope="module")
def smoke_run(compose_cfg, tmp_path_factory):
    """One smoke run evaluating at steps 2 and 4 with a slow bicubic backbone, wandb offline."""
    import wandb

    run_dir = tmp_path_factory.mktemp("edt") / "run"
    cfg = compose_cfg([*SMOKE, "eval_during_training.prompt_sources=[vlm,vlm+adapter]"], run_dir)
    upscale = Resampler.upscale

    def slow_upscale(self, images, prompts, size=None):
        time.sleep(SLEEP_S)
        return upscale(self, images, prompts, size)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Resampler, "upscale", slow_upscale)
        trainer, _ = build_trainer(cfg)
        modes = ModeRecorder()
        trainer.add_callback(modes)
        trainer.train()
    summary = dict(wandb.run.summary)
    wandb.finish()
    return trainer, run_dir, summary, modes


def eval_entries(history: list[dict]) -> dict[int, dict]:
    return {e["step"]: e for e in history if f"{SECTION}/seconds" in e}


@pytest.mark.slow
def test_evaluates_at_the_configured_steps_and_writes_results_and_figures(smoke_run):
    trainer, run_dir, summary, _ = smoke_run
    assert trainer.state.global_step == 4
    assert sorted(p.name for p in (run_dir / SECTION).iterdir()) == ["step-2", "step-4"]
    for step in (2, 4):
        folder = run_dir / SECTION / f"step-{step}"
        rows = list(csv.DictReader((folder / "results.csv").open()))
        assert {(r["method"], r["scale"], r["metric"]) for r in rows} >= {
            ("recursive_multiscale-vlm+adapter", "4", "psnr"), ("recursive_multiscale-vlm+adapter", "16", "piqe"),
            ("recursive_multiscale-vlm", "4", "ssim")}
        assert (folder / "results.md").is_file() and not (folder / "error.txt").exists()
        assert sorted(p.name for p in folder.glob("chains-*.png")) == ["chains-hubble_deep_field.png", "chains-retina.png"]
    # the per-scale means go into the trainer's log history, log_history.jsonl and wandb, at their step
    key = f"{SECTION}/recursive_multiscale-vlm+adapter/psnr/4x"
    in_memory = eval_entries(trainer.state.log_history)
    on_disk = eval_entries([json.loads(line) for line in (run_dir / "log_history.jsonl").read_text().splitlines()])
    assert sorted(in_memory) == sorted(on_disk) == [2, 4]
    assert in_memory[4][key] == on_disk[4][key] == pytest.approx(summary[key])
    assert summary[f"{SECTION}/total_seconds"] >= 2 * 2 * SLEEP_S
    media = list((run_dir / "wandb").glob(f"offline-run-*/files/media/images/{SECTION}/chains_*.png"))
    assert len(media) == 4  # 2 images x 2 evaluations


@pytest.mark.slow
def test_the_prompts_come_from_the_adapter_being_trained(smoke_run):
    _, run_dir, _, modes = smoke_run
    prompts = {step: json.loads((run_dir / SECTION / f"step-{step}" / "prompts.json").read_text()) for step in (2, 4)}
    adapter, base = "recursive_multiscale-vlm+adapter", "recursive_multiscale-vlm"
    assert prompts[2]["retina"][base] == prompts[4]["retina"][base]  # adapter off: the same base model
    assert any(prompts[2][name][adapter] != prompts[4][name][adapter] for name in prompts[2])  # the LoRA moved
    assert modes.training == {1: True, 2: True, 3: True, 4: True}  # train mode back after each evaluation


@pytest.mark.slow
def test_step_time_excludes_the_evaluation(smoke_run):
    trainer, _, _, _ = smoke_run
    evals = eval_entries(trainer.state.log_history)
    step_time = {e["step"]: e["step_time"] for e in trainer.state.log_history if "step_time" in e}
    assert min(e[f"{SECTION}/seconds"] for e in evals.values()) >= 2 * SLEEP_S
    assert max(step_time[2], step_time[4]) < 2 * SLEEP_S  # TRL's step_time is measured inside training_step


def test_evaluation_mode_restores_train_mode_and_random_state():
    model = torch.nn.Linear(2, 2).train()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    with evaluation_mode(model):
        assert not model.training and not torch.is_grad_enabled()
        torch.rand(5), np.random.rand(5), random.random()
    assert model.training and torch.is_grad_enabled()
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


@pytest.mark.slow
def test_a_failing_evaluation_is_reported_and_training_goes_on(make_config, tmp_path, monkeypatch, caplog):
    def broken(self, images, prompts, size=None):
        raise RuntimeError("backbone broke")

    monkeypatch.setattr(Resampler, "upscale", broken)
    trainer, _ = build_trainer(make_config(*SMOKE, "logging.wandb=false"))
    with caplog.at_level("WARNING", logger="coz_train.eval.during_training"):
        trainer.train()
    assert trainer.state.global_step == 4
    for step in (2, 4):
        error = tmp_path / "run" / SECTION / f"step-{step}" / "error.txt"
        assert "RuntimeError: backbone broke" in error.read_text()
    assert {s: e[f"{SECTION}/failed"] for s, e in eval_entries(trainer.state.log_history).items()} == {2: 1.0, 4: 1.0}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "backbone broke" in r.getMessage()]
    assert len(warnings) == 2 and "at step 2 failed" in warnings[0]


@pytest.mark.parametrize(("override", "message"), [
    ("eval_during_training.every=-1", r"eval_during_training\.every=-1"),
    ("eval_during_training.metrics=[psnr,sharpness]", r"eval_during_training\.metrics: unknown metric\(s\) \['sharpness'\]"),
    ("eval_during_training.backbone.name=esrgan", r"eval_during_training\.backbone\.name='esrgan' is not one of"),
    ("eval_during_training.steps=9", r"eval_during_training\.process_size=128 cannot be zoomed 9 times"),
    ("eval_during_training.methods=[zoom]", r"eval_during_training\.methods: \['zoom'\]"),
    ("eval_during_training.prompt_sources=[vlm+adapter+user]", r"eval_during_training\.user_prompt is empty"),
    ("eval_during_training.adapter=/tmp", r"eval_during_training\.adapter='/tmp': the adapter evaluated"),
    ("eval/backbone@eval_during_training.backbone=osediff_sd3", r"eval_during_training\.backbone\.lora_dir="),
    ("eval_during_training.image_dir=/no/such/folder", r"eval_during_training\.image_dir='/no/such/folder' is not"),
])
def test_a_broken_eval_config_fails_before_any_model_loads(make_config, no_model_loads, override, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        build_trainer(make_config(*SMOKE, "logging.wandb=false", override))
    with pytest.raises(no_model_loads):  # control: the same mistake with the evaluation off is never read
        build_trainer(make_config(*SMOKE, "logging.wandb=false", override, "eval_during_training.every=0"))


def test_the_training_images_are_refused_as_held_out(make_config, no_model_loads, tmp_path: Path):
    train = tmp_path / "train"
    (train / "sub").mkdir(parents=True)
    (tmp_path / "held_out").mkdir()
    folders = [*SMOKE, "logging.wandb=false", f"data.image_dir={train}"]
    for held_out in (train, train / "sub", tmp_path):  # the same folder, inside it, around it
        with pytest.raises(ValueError, match=r"eval_during_training\.image_dir='.*' overlaps the training images "
                                             r"\(data\.image_dir="):
            build_trainer(make_config(*folders, f"eval_during_training.image_dir={held_out}"))
    with pytest.raises(no_model_loads):
        build_trainer(make_config(*folders, f"eval_during_training.image_dir={tmp_path / 'held_out'}"))

    shipped = [*SMOKE, "logging.wandb=false"]  # the smoke run trains on the first 4 shipped images
    with pytest.raises(ValueError, match=r"shipped_images has \['astronaut'\], which the training uses .*first "
                                         r"data\.max_images=4.*shipped_images=\[hubble_deep_field,"):
        build_trainer(make_config(*shipped, "eval_during_training.shipped_images=[astronaut,retina]"))
    with pytest.raises(ValueError, match=r"shipped_images has \['retina'\]"):
        build_trainer(make_config(*shipped, "eval_during_training.shipped_images=[retina]", "data.max_images=null"))
    with pytest.raises(no_model_loads):
        build_trainer(make_config(*shipped, "eval_during_training.shipped_images=[retina]"))
