"""`python -m coz_train.bench` on the CPU with tiny models: it runs, checks pass, bad input stops early."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coz_train.bench.report import step_summary, table


def bench(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "coz_train.bench", f"hydra.run.dir={tmp_path}", *overrides],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )


def test_tiny_bench_runs_every_phase_and_every_check_passes(tmp_path):
    done = bench(tmp_path, "bench.reps=1", "bench.warmup=0")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert list(result["phases"]) == ["preprocess", "critic", "vision", "rollout", "logps", "train"]
    for name, phase in result["phases"].items():
        assert "error" not in phase, (name, phase.get("error"))
        assert phase["check"]["passed"], (name, phase["check"])
        assert phase["plain"]["s"] > 0 and phase["fast"]["s"] > 0
        assert phase["floor_s"] > 0 or name == "preprocess"  # CPU preprocessing has no device floor
    train = result["phases"]["train"]["check"]
    assert train["grad_rel_err"] < 1e-4
    assert train["control_detached_cache_grad_rel_err"] > 1e-2  # the controls really are off
    assert train["control_position_plus_one_logp_rel_err"] > 100 * train["logp_rel_err"]
    step = result["step"]
    assert step["complete"] and step["goal_s"] is None  # the 4 s goal is for bench.size=real
    assert "| train" in done.stdout and "| step" in done.stdout


def test_selected_phases_only(tmp_path):
    done = bench(tmp_path, "bench.reps=1", "bench.warmup=0", "bench.phases=[vision]")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert list(result["phases"]) == ["vision"] and result["step"] is None


def test_static_cache_rollout_is_timed_beside_the_fast_one(tmp_path):
    done = bench(tmp_path, "bench.reps=1", "bench.warmup=0", "bench.phases=[rollout]", "bench.static_cache=true")
    assert done.returncode == 0, done.stderr[-3000:]
    rollout = json.loads((tmp_path / "bench.json").read_text())["phases"]["rollout"]
    assert rollout["fast_static"]["s"] > 0 and rollout["fast_static"]["first_call_s"] > 0
    assert "fast_static" in done.stdout


@pytest.mark.parametrize(("override", "message"), [
    ("bench.phases=[vision,warp]", "bench.phases: unknown ['warp']"),
    ("bench.size=huge", "bench.size='huge'"),
    ("bench.image_size=100", "multiple of 28"),
])
def test_bad_settings_stop_before_models_build(tmp_path, override, message):
    done = bench(tmp_path, override)
    assert done.returncode != 0
    assert message in done.stderr
    assert not (tmp_path / "bench.json").exists()


def test_table_marks_a_failed_check():
    timing = dict(s=1.0, peak_GB=None)
    phases = {"logps": dict(plain=timing, fast=dict(timing, s=0.5), floor_s=0.1, check=dict(passed=False))}
    result = dict(phases=phases, step=step_summary(phases, "real"))
    text = table(result)
    assert "FAIL" in text and "2.00" in text
    assert result["step"]["complete"] is False and result["step"]["meets_goal"] is None  # judged on whole steps
    assert "goal: all step phases" in text
