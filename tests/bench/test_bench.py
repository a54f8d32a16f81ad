"""`python -m coz_train.bench` on the CPU with tiny models: it runs, checks pass, bad input stops early."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coz_train.bench import phases as ph
from coz_train.bench.report import step_summary, table


def bench(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "coz_train.bench", f"hydra.run.dir={tmp_path}", *overrides],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )


def check_column(stdout: str) -> list[str]:
    """The last column of the printed table's rows, header and rule left out."""
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| phase")]
    return [row.rstrip(" |").rsplit("|", 1)[1].strip() for row in rows]


def test_tiny_bench_runs_every_phase_and_every_check_passes(tmp_path):
    done = bench(tmp_path, "bench.reps=1", "bench.warmup=0")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert list(result["phases"]) == ["preprocess", "critic", "vision", "rollout", "logps", "train"]
    for name, phase in result["phases"].items():
        assert "error" not in phase, (name, phase.get("error"))
        assert phase["check"]["passed"], (name, phase["check"])
        assert "error" not in phase["check"], (name, phase["check"])
        assert phase["plain"]["s"] > 0 and phase["fast"]["s"] > 0
        assert phase["floor_s"] > 0 or name == "preprocess"  # CPU preprocessing has no device floor
    phases = result["phases"]
    train = phases["train"]["check"]
    assert train["logp_rel_err"] < ph.LOGITS_TOL and train["grad_rel_err"] < ph.GRAD_TOL
    assert train["rows"] == min(ph.TRAIN_CHECK_ROWS, result["meta"]["shape"]["generations"])
    for err, control in [(train["logp_rel_err"], train["control_position_plus_one_logp_rel_err"]),
                         (train["grad_rel_err"], train["control_detached_cache_grad_rel_err"])]:
        assert control > max(100 * err, ph.CONTROL_MIN)  # the controls really are off
    critic = phases["critic"]["check"]
    assert critic["control_position_plus_one_rel_err"] > max(100 * critic["logits_rel_err"], ph.CONTROL_MIN)
    assert phases["critic"]["work"]["scoring"] == "logits" and "encode_s_not_timed" in phases["critic"]["work"]
    rollout = phases["rollout"]
    assert rollout["check"]["steps_compared"] >= 1 and 0 <= rollout["check"]["greedy_token_agreement"] <= 1
    assert rollout["work"]["mode"] == "train"
    for name in ("logps", "train"):  # the fast paths find the step's images in the vision cache
        assert phases[name]["work"]["vision_encodings_in_fast"] == 0
    step = result["step"]
    assert step["complete"] and step["goal_s"] is None  # the 4 s goal is for bench.size=real
    assert "| train" in done.stdout and "| step" in done.stdout
    assert "pass" in check_column(done.stdout) and "FAIL" not in check_column(done.stdout)


def test_checks_off_give_no_checks_and_exit_0_and_the_static_and_compiled_rollouts_are_report_only(tmp_path):
    done = bench(tmp_path, "bench.reps=1", "bench.warmup=0", "bench.check=false", "bench.static_cache=true",
                 "bench.compiled_decode=true")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert len(result["phases"]) == 6
    for name, phase in result["phases"].items():
        assert "error" not in phase, (name, phase.get("error"))
        assert phase["check"] is None and phase["fast"]["s"] > 0
    checks = check_column(done.stdout)
    assert checks and not {"pass", "FAIL"} & set(checks), checks
    # the static-cache rollout (not compiled, as TRL generates) is timed beside the fast one, not in the step
    rollout = result["phases"]["rollout"]
    static = rollout["fast_static"]
    assert static["s"] > 0 and static["first_call_s"] > 0 and static["report_only"] and not static["compiled"]
    step = result["step"]
    assert step["fast_s"] == pytest.approx(sum(result["phases"][p]["fast"]["s"] for p in step["phases"]))
    assert "fast_static" in done.stdout and "report only" in done.stdout
    # the compiled rollout (perf.compiled_decode): timed apart from its compilation, and a step total with it
    compiled = rollout["fast_compiled"]
    assert compiled["s"] > 0 and compiled["compiled"] and compiled["report_only"] and compiled["agreement"] is None
    assert step["compiled"]["fast_s"] == pytest.approx(step["fast_s"] - rollout["fast"]["s"] + compiled["s"])
    assert "fast_compiled" in done.stdout and "+compiled" in done.stdout


def test_selected_phases_only_and_critic_generate_scoring_is_timed_and_checked(tmp_path):
    done = bench(tmp_path, "bench.reps=1", "bench.warmup=0", "bench.phases=[vision,critic]",
                 "bench.critic_scoring=generate")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert list(result["phases"]) == ["critic", "vision"] and result["step"]["phases"] == ["critic"]
    critic = result["phases"]["critic"]
    check = critic["check"]
    assert check["passed"] and check["tokens_identical"], check
    assert check["logits_rel_err"] < ph.LOGITS_TOL and check["steps_compared"] >= 1
    assert check["control_position_plus_one_rel_err"] > max(100 * check["logits_rel_err"], ph.CONTROL_MIN)
    assert critic["work"]["scoring"] == "generate" and critic["work"]["decode_steps"] == 8  # critic.max_new_tokens


def compose_bench(tmp_path: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from coz_train.config import config_dir, register_configs

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, f"output_dir={tmp_path}"])


def test_bad_settings_stop_the_command(tmp_path):
    done = bench(tmp_path, "bench.phases=[vision,warp]")
    assert done.returncode != 0
    assert "bench.phases: unknown ['warp']" in done.stderr
    assert not (tmp_path / "bench.json").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("bench.phases=[vision,warp]", "bench.phases: unknown ['warp']"),
    ("bench.size=huge", "bench.size='huge'"),
    ("bench.image_size=100", "multiple of 28"),
    ("bench.critic_scoring=vote", "bench.critic_scoring='vote'"),
])
def test_bad_settings_stop_before_models_build(tmp_path, override, message):
    from coz_train.bench.run import run_bench

    with pytest.raises(ValueError, match=re.escape(message)):
        run_bench(compose_bench(tmp_path, override))
    assert not (tmp_path / "bench.json").exists()


def test_a_check_that_raises_keeps_the_phase_timings(tmp_path, monkeypatch):
    from coz_train.bench.run import run_bench

    def out_of_memory(bench):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr("coz_train.bench.phases.logps.logps_check", out_of_memory)
    cfg = compose_bench(tmp_path, "bench.phases=[logps]", "bench.reps=1", "bench.warmup=0")
    logps = run_bench(cfg)["phases"]["logps"]
    assert logps["plain"]["s"] > 0 and logps["fast"]["s"] > 0
    assert logps["check"]["passed"] is False and "OutOfMemoryError" in logps["check"]["error"]
    assert "CHECK ERROR OutOfMemoryError" in table(json.loads((tmp_path / "bench.json").read_text()))


def test_table_marks_a_failed_check_and_checks_off():
    timing = dict(s=1.0, peak_GB=None)
    phases = {"logps": dict(plain=timing, fast=dict(timing, s=0.5), floor_s=0.1, check=dict(passed=False)),
              "train": dict(plain=timing, fast=dict(timing, s=0.25), floor_s=0.1, check=None)}
    result = dict(phases=phases, step=step_summary(phases, "real"))
    text = table(result)
    assert "FAIL" in text and "2.00" in text and "4.00" in text
    assert text.splitlines()[5].rstrip(" |").endswith("-")  # train, fast: no check
    assert result["step"]["complete"] is False and result["step"]["meets_goal"] is None  # judged on whole steps
    assert "goal: all step phases" in text


def test_step_uses_the_fast_path_not_the_report_only_variants():
    timing = dict(s=2.0, peak_GB=None)
    phases = {"rollout": dict(plain=timing, fast=dict(timing, s=1.0), fast_static=dict(timing, s=0.1),
                              floor_s=0.1, check=dict(passed=True))}
    step = step_summary(phases, "real")
    assert step["fast_s"] == 1.0 and "compiled" not in step
    assert "report only" in table(dict(phases=phases, step=step))


def test_a_compiled_rollout_gives_a_second_step_total_judged_against_the_goal():
    timing = dict(s=2.0, peak_GB=None)
    phases = {name: dict(plain=timing, fast=dict(timing, s=1.0), floor_s=0.1, check=dict(passed=True))
              for name in ("preprocess", "rollout", "critic", "logps", "train")}  # fast step: 5 s
    agreement = dict(greedy_token_agreement=0.75)
    phases["rollout"]["fast_compiled"] = dict(timing, s=0.2, first_call_s=30.0, agreement=agreement)
    step = step_summary(phases, "real")
    assert step["fast_s"] == 5.0 and not step["meets_goal"]
    assert step["compiled"]["fast_s"] == pytest.approx(4.2) and not step["compiled"]["meets_goal"]
    phases["train"]["fast"]["s"] = 0.5
    step = step_summary(phases, "real")
    assert step["fast_s"] == 4.5 and not step["meets_goal"]
    assert step["compiled"]["meets_goal"] and not step["compiled"]["meets_stretch"]
    text = table(dict(phases=phases, step=step))
    assert "greedy tokens 75% equal" in text and "goal 4.0 s: not met" in text and "goal 4.0 s: met" in text
    assert step_summary(phases, "tiny")["compiled"]["meets_goal"] is None  # the goal is for bench.size=real
