"""Evaluation during training: it runs at the configured steps with the live adapter, writes its tables and
figures, stays out of the step time and the random stream, survives its own failure, follows a chosen zoom centre
with its ground truth, logs the consistency scores and the judge's, and a broken or training-image config stops
the run before any model loads."""

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


@pytest.fixture(scope="module")
def centred_run(compose_cfg, tmp_path_factory):
    """Two steps evaluating once, at step 2: every method zooms around a chosen point (eval_during_training.zoom_centre,
    and a zoom_centres file for hubble_deep_field), the consistency scores on (the default), the tiny judge."""
    folder = tmp_path_factory.mktemp("edt-centre")
    centres = folder / "centres.csv"
    x, y = CENTRES["hubble_deep_field"]
    centres.write_text(f"image,x,y\nhubble_deep_field,{x},{y}\n")
    cfg = compose_cfg(["+experiment=smoke", "grpo.max_steps=2", "grpo.save_steps=10", "eval_during_training.every=2",
                       "logging.wandb=false", "eval_during_training.methods=[bicubic,recursive_multiscale]",
                       "eval_during_training.zoom_centre=[{},{}]".format(*CENTRES["retina"]),
                       f"eval_during_training.zoom_centres={centres}", "eval/judge@eval_during_training.judge=tiny"],
                      folder / "run")
    trainer, _ = build_trainer(cfg)
    trainer.train()
    return trainer, folder / "run"


CENTRES = {"retina": (0.25, 0.25), "hubble_deep_field": (0.75, 0.6)}


def bicubic_psnr_4x(centre: tuple[float, float] | None) -> float:
    """The mean over the held-out images of the bicubic state's PSNR at 4x against its ground truth, both at the
    windows around `centre` (each image's own from CENTRES when None), computed here from the chain's parts."""
    from coz_train.data.images import shipped_images
    from coz_train.data.zoom import start_state
    from coz_train.image_quality import build_metrics
    from coz_train.sr.chain import reference_states, resample_chain, zoom_windows

    psnr = build_metrics(["psnr"], torch.device("cpu"))[0]["psnr"]
    values = []
    for name, original in shipped_images(list(CENTRES)):
        windows = zoom_windows(128, 4, 2, centre or CENTRES[name.split(":", 1)[1]])
        state = resample_chain(start_state(original.convert("RGB"), 128), "bicubic", 4, 2, windows).states[1]
        values.append(psnr(state, reference_states(original.convert("RGB"), 128, 4, 2, windows)[0]))
    return float(np.mean(values))


@pytest.mark.slow
def test_a_chosen_zoom_centre_moves_the_chains_and_the_ground_truth_and_consistency_is_logged(centred_run):
    trainer, run_dir = centred_run
    folder = run_dir / SECTION / "step-2"
    assert not (folder / "error.txt").exists()
    logged = eval_entries(trainer.state.log_history)[2]
    assert logged[f"{SECTION}/bicubic/psnr/4x"] == pytest.approx(bicubic_psnr_4x(None), rel=1e-5)
    assert abs(logged[f"{SECTION}/bicubic/psnr/4x"] - bicubic_psnr_4x((0.5, 0.5))) > 0.1  # not the centre's
    for method in ("bicubic", "recursive_multiscale-vlm+adapter"):
        for metric in ("consistency_psnr", "consistency_ssim"):
            assert {f"{SECTION}/{method}/{metric}/{s}x" for s in (4, 16)} <= set(logged)
        assert f"{SECTION}/{method}/projected_psnr/16x" in logged  # the 8 px region at 16x is below SSIM's 11 px
    assert logged[f"{SECTION}/bicubic/consistency_psnr/4x"] > 30  # the bicubic states are resizes of the start
    table = (folder / "results.md").read_text()
    assert "## consistency_psnr (higher is better)" in table and "## hallucination (lower is better)" in table


@pytest.mark.slow
def test_the_judge_of_eval_during_training_scores_every_method_and_scale(centred_run):
    trainer, run_dir = centred_run
    logged = eval_entries(trainer.state.log_history)[2]
    judged = {k: v for k, v in logged.items() if "/hallucination/" in k}
    assert set(judged) == {f"{SECTION}/{m}/hallucination/{s}x"
                           for m in ("bicubic", "recursive_multiscale-vlm+adapter") for s in (4, 16)}
    assert all(0.0 <= v <= 1.0 for v in judged.values())
    # the bicubic backbone makes the CoZ chain's 4x state the bicubic method's: the same pair, the same answer
    coz = f"{SECTION}/recursive_multiscale-vlm+adapter/hallucination/4x"
    assert judged[f"{SECTION}/bicubic/hallucination/4x"] == judged[coz]
    # one cached answer per distinct pair: 2 images x (that shared 4x pair + 2 pairs at 16x)
    assert len(list((run_dir / SECTION / "judge_cache").rglob("*.json"))) == 2 * 3


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
    ("eval_during_training.zoom_centre=[1.5,0.5]", r"eval_during_training\.zoom_centre: zoom centre \(1\.5, 0\.5\) is "
                                                   r"outside the image"),
    ("eval_during_training.zoom_centres=/no/such.csv", r"eval_during_training\.zoom_centres='/no/such\.csv' is not a "
                                                       r"file"),
    ("eval_during_training.consistency_metrics=[niqe]", r"eval_during_training\.consistency_metrics: \['niqe'\] are "
                                                        r"no-reference"),
    ("eval_during_training.judge.url=http://127.0.0.1:8001", r"eval_during_training\.judge\.url=.* but "
                                                             r"eval_during_training\.judge\.name_or_path is null.*"
                                                             r"eval/judge@eval_during_training\.judge=internvl3_5_38b"),
    ("eval_during_training.num_shards=2", r"eval_during_training\.shard=0 of eval_during_training\.num_shards=2: "
                                          r"rank zero evaluates every held-out image"),
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
