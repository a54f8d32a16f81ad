"""The checkpoint sweep on a real smoke training run: curves for its checkpoints, and a second invocation
that skips the finished ones."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import coz_train.eval.checkpoints as sweep_module
from coz_train.eval.checkpoints import main, step_config, sweep_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EVAL = ["+experiment=smoke_eval", "eval/backbone=bicubic", "eval.methods=[bicubic,recursive_multiscale]",
        "eval.prompt_sources=[null,vlm]", "eval.metrics=[piqe]", "eval.steps=2", "eval.max_images=1",
        "eval.figures=false", "eval.consistency_metrics=[]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A smoke training run with checkpoint-2 and checkpoint-4 (and its .hydra config and log history)."""
    folder = tmp_path_factory.mktemp("smoke") / "run"
    result = subprocess.run(
        [sys.executable, "-m", "coz_train", "+experiment=smoke", "grpo.max_steps=4", "grpo.save_steps=2",
         "logging.wandb=false", "logging.sample_every=0", f"hydra.run.dir={folder}"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert (folder / "checkpoint-4" / "COMPLETE").is_file()
    return folder


def files_with_times(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_each_step_gets_its_own_config(run):
    cfg = sweep_config(run, [*EVAL, "eval.prompt_sources=[null,vlm,vlm+user,vlm+adapter]", "eval.user_prompt=fur",
                             "eval.methods=[nearest,onestep,recursive_multiscale]"])
    base = step_config(cfg, 0, None, run / "sweep").eval
    assert list(base.prompt_sources) == ["null", "vlm", "vlm+user"] and base.adapter is None
    assert list(base.methods) == ["nearest", "onestep", "recursive_multiscale"]
    step = step_config(cfg, 2, run / "checkpoint-2", run / "sweep").eval
    assert list(step.methods) == ["recursive_multiscale"]  # onestep has only the null source here
    assert list(step.prompt_sources) == ["vlm+adapter", "vlm+adapter+user"] and step.adapter == str(run / "checkpoint-2")
    assert step.user_prompt == "fur"
    with pytest.raises(ValueError, match=r"no VLM source.*eval\.prompt_sources=\[null,vlm\]"):
        main([str(run), *EVAL, "eval.prompt_sources=[null]"])


def test_curves_for_every_checkpoint_and_a_second_run_skips_finished_ones(run, monkeypatch, caplog):
    caplog.set_level("INFO")
    incomplete = run / "checkpoint-6"
    shutil.copytree(run / "checkpoint-4", incomplete)
    (incomplete / "COMPLETE").unlink()  # an interrupted save: never evaluated
    sweep_dir = main([str(run), *EVAL])
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["step-0", "step-2", "step-4"]
    assert "Leaving out" in caplog.text and "checkpoint-6" in caplog.text
    base_methods = {r["method"] for r in csv.DictReader((sweep_dir / "step-0" / "results.csv").open())}
    assert base_methods == {"bicubic", "recursive_multiscale-null", "recursive_multiscale-vlm"}
    step_methods = {r["method"] for r in csv.DictReader((sweep_dir / "step-2" / "results.csv").open())}
    assert step_methods == {"recursive_multiscale-vlm+adapter"}  # the prompt-independent results: once, at step 0
    rows = list(csv.DictReader((sweep_dir / "checkpoint_results.csv").open()))
    curve = sorted((int(r["step"]), int(r["scale"])) for r in rows if r["method"] == "recursive_multiscale-vlm")
    assert curve == [(0, 4), (0, 16), (2, 4), (2, 16), (4, 4), (4, 16)]
    assert {r["method"] for r in rows if r["step"] == "0"} >= {"bicubic", "recursive_multiscale-null"}
    md = (sweep_dir / "checkpoint_results.md").read_text()
    assert "| recursive_multiscale-vlm @ step 4 |" in md and "| bicubic (reference) |" in md
    width, height = Image.open(sweep_dir / "checkpoint_curves.png").size
    assert width > 3 * 300 and height > 2 * 250  # reward panels above one metric row of two scales

    # second invocation: a new checkpoint's folder is missing (here: step 4's, removed), the rest are skipped
    kept = {step: files_with_times(sweep_dir / f"step-{step}" / "per-sample") for step in (0, 2)}
    shutil.rmtree(sweep_dir / "step-4")
    evaluated = []
    real_evaluate = sweep_module.evaluate
    monkeypatch.setattr(sweep_module, "evaluate", lambda cfg: evaluated.append(Path(cfg.output_dir).name) or
                        real_evaluate(cfg))
    caplog.clear()
    main([str(run), *EVAL])
    assert evaluated == ["step-4"]
    assert "Step 0: already evaluated" in caplog.text and "Step 2: already evaluated" in caplog.text
    for step, files in kept.items():
        assert files_with_times(sweep_dir / f"step-{step}" / "per-sample") == files
    assert (sweep_dir / "step-4" / "results.csv").is_file()
    # a different eval config is refused for a folder made with another
    with pytest.raises(ValueError, match=r"eval\.metrics"):
        main([str(run), *EVAL, "eval.metrics=[psnr]"])
