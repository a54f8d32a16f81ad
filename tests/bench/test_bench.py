"""`python -m coz_train.bench` on the CPU with tiny models: the trainer's steps plain vs fast, the phase checks pass,
bad input stops early."""

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
from coz_train.bench.report import judge, step_table, table
from coz_train.bench.step_timer import PHASES as STEP_PHASES


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
    """`python -m coz_train.bench` as it is (bench.size=tiny): what CI runs."""
    done = bench(tmp_path)
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
    assert train["rows"] == min(ph.TRAIN_CHECK_ROWS, result["meta"]["phase_shape"]["generations"])
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
    assert "| train" in done.stdout and "pass" in check_column(done.stdout) and "FAIL" not in check_column(done.stdout)

    # the trainer's own steps, plain and fast, built by build_trainer from conf/experiment/bench_tiny.yaml
    step = result["step"]
    assert step["config"]["policy"] == "tiny:qwen2_5_vl" and not step["config"]["stand_in_models"]
    assert (step["config"]["prompts"], step["config"]["generations"]) == (2, 4)
    plain, fast = step["paths"]["plain"], step["paths"]["fast"]
    for path in (plain, fast):
        assert "error" not in path, path.get("error")
        assert len(path["times"]) == 3 and path["steps"] == 2  # bench.warmup=1 + bench.reps=2, medians of 2
        assert set(path["phases"]) == set(STEP_PHASES) and all(v >= 0 for v in path["phases"].values())
        assert path["phases"]["rollout"] > 0 and path["phases"]["rewards"] > 0 and path["phases"]["train"] > 0
        assert path["s"] == pytest.approx(sum(path["phases"].values()), rel=0.05)  # the phases split the step
        assert path["cpu_s"] == pytest.approx(path["s"] - path["model_s"])
        assert 0 < path["rollout_model_s"] <= path["phases"]["rollout"]
        assert 0 < path["critic_model_s"] <= path["phases"]["rewards"]
        assert path["work"]["rows"] == 8 and path["work"]["completion_tokens"] > 0
    # every path starts from the same weights, seed and prompts, dropout off: the same rewards, step by step
    assert len(plain["rewards"]) == 3 and fast["rewards"] == pytest.approx(plain["rewards"], abs=1e-4)
    assert step["floors"]["rollout"] > 0 and step["floors"]["train"] > 0 and step["floors"]["data"] == 0
    assert "trainer step: 2 prompts x 4 completions" in done.stdout and "| cpu share" in done.stdout
    assert "fast: step rewards" in done.stdout


def test_checks_off_give_no_checks_and_exit_0_and_the_static_and_compiled_rollouts_are_report_only(tmp_path):
    done = bench(tmp_path, "bench.reps=1", "bench.warmup=0", "bench.check=false", "bench.static_cache=true",
                 "bench.compiled_decode=true", "grpo.max_completion_length=4")
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
    assert "fast_static" in done.stdout and "report only" in done.stdout
    compiled = rollout["fast_compiled"]
    assert compiled["s"] > 0 and compiled["compiled"] and compiled["report_only"] and compiled["agreement"] is None
    assert "fast_compiled" in done.stdout
    # and the trainer's step with perf.compiled_decode as its own path (its first step compiles)
    paths = result["step"]["paths"]
    assert list(paths) == ["plain", "fast", "fast_compiled"] and "error" not in paths["fast_compiled"]
    assert paths["fast_compiled"]["first_step_s"] > 0 and "fast_compiled s" in done.stdout


def test_selected_phases_only_and_critic_generate_scoring_is_timed_and_checked(tmp_path):
    done = bench(tmp_path, "bench.reps=1", "bench.warmup=0", "bench.phases=[vision,critic]",
                 "bench.critic_scoring=generate", "bench.step=false")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert list(result["phases"]) == ["critic", "vision"] and result["step"] is None
    critic = result["phases"]["critic"]
    check = critic["check"]
    assert check["passed"] and check["tokens_identical"], check
    assert check["logits_rel_err"] < ph.LOGITS_TOL and check["steps_compared"] >= 1
    assert check["control_position_plus_one_rel_err"] > max(100 * check["logits_rel_err"], ph.CONTROL_MIN)
    assert critic["work"]["scoring"] == "generate" and critic["work"]["decode_steps"] == 4  # tiny critic.max_new_tokens


def compose_bench(tmp_path: Path, *overrides: str, size: str = "tiny"):
    from hydra import compose, initialize_config_dir

    from coz_train.config import config_dir, register_configs

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=[f"+experiment=bench_{size}", *overrides, f"output_dir={tmp_path}"])


def test_the_real_size_on_a_cpu_times_the_paper_setting_with_stand_in_models_and_no_phase_checks(tmp_path):
    from coz_train.bench.phases.timing import Device
    from coz_train.bench.run import wanted_phases
    from coz_train.bench.step import STAND_INS, step_config

    cfg = compose_bench(tmp_path, size="real")
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert wanted_phases(cfg.bench, cpu) == [] and wanted_phases(cfg.bench, gpu) == list(ph.PHASES)
    run_cfg, stand_in = step_config(cfg, Device(cpu, torch.float32, 1.0, 1.0), 4, tmp_path / "trainer")
    assert stand_in and run_cfg.policy.name_or_path == STAND_INS["policy"]["name_or_path"]
    assert run_cfg.critic.name_or_path == STAND_INS["critic"]["name_or_path"] and not run_cfg.grpo.bf16
    # the paper's setting stays: 8 prompts x 8 completions of 64 tokens, 512-px states at 504 px
    grpo = run_cfg.grpo
    assert (grpo.per_device_train_batch_size * grpo.gradient_accumulation_steps // grpo.num_generations,
            grpo.num_generations, grpo.max_completion_length) == (8, 8, 64)
    assert (run_cfg.data.process_size, run_cfg.policy.max_pixels, run_cfg.critic.max_pixels) == (512, 262144, 262144)
    assert grpo.max_steps == 4 and grpo.save_strategy == "no" and not run_cfg.logging.wandb
    on_gpu, stand_in = step_config(cfg, Device(gpu, torch.bfloat16, 1.0, 1.0), 4, tmp_path / "trainer")
    assert not stand_in and on_gpu.policy.name_or_path == "random:Qwen/Qwen2.5-VL-3B-Instruct"
    assert on_gpu.critic.name_or_path == "random:Qwen/Qwen2.5-VL-7B-Instruct" and on_gpu.grpo.bf16


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
    cfg = compose_bench(tmp_path, "bench.phases=[logps]", "bench.reps=1", "bench.warmup=0", "bench.step=false")
    logps = run_bench(cfg)["phases"]["logps"]
    assert logps["plain"]["s"] > 0 and logps["fast"]["s"] > 0
    assert logps["check"]["passed"] is False and "OutOfMemoryError" in logps["check"]["error"]
    assert "CHECK ERROR OutOfMemoryError" in table(json.loads((tmp_path / "bench.json").read_text()))


def test_the_phase_table_marks_a_failed_check_and_checks_off():
    timing = dict(s=1.0, peak_GB=None)
    phases = {"logps": dict(plain=timing, fast=dict(timing, s=0.5), floor_s=0.1, check=dict(passed=False)),
              "train": dict(plain=timing, fast=dict(timing, s=0.25), floor_s=0.1, check=None)}
    text = table(dict(phases=phases, step=None, meta=dict(size="tiny")))
    assert "FAIL" in text and "2.00" in text and "4.00" in text
    assert text.splitlines()[6].rstrip(" |").endswith("-")  # train, fast: no check


def step_result(fast_s: float, cpu_s: float, stand_in: bool = False) -> dict:
    def path(s: float, cpu: float) -> dict:
        phases = dict.fromkeys(STEP_PHASES, s / len(STEP_PHASES))
        return dict(s=s, phases=phases, cpu_s=cpu, model_s=s - cpu, peak_GB=40.0, first_step_s=2 * s,
                    rewards=[1.0, 0.5], cpu_phases={"data": cpu})

    config = dict(prompts=8, generations=8, max_completion_length=64, policy="p", critic="c", stand_in_models=stand_in)
    floors = dict(dict.fromkeys(STEP_PHASES, 0.1), step=0.9)
    return dict(config=config, floors=floors, paths={"plain": path(20.0, 2.0), "fast": path(fast_s, cpu_s)})


def test_the_step_is_judged_at_the_real_size_and_the_cpu_share_also_with_stand_ins():
    verdicts = judge(step_result(3.0, 0.1), "real", stand_in=False)
    assert verdicts["fast"] == dict(meets_goal=True, meets_stretch=False, cpu_meets_goal=True)
    assert judge(step_result(5.0, 0.3), "real", stand_in=False)["fast"]["meets_goal"] is False
    stand_in = judge(step_result(3.0, 0.3, stand_in=True), "real", stand_in=True)["fast"]
    assert stand_in["meets_goal"] is None and stand_in["cpu_meets_goal"] is False  # the models are not the real ones
    assert judge(step_result(3.0, 0.1), "tiny", stand_in=False)["fast"] == dict(
        meets_goal=None, meets_stretch=None, cpu_meets_goal=None)
    text = step_table(step_result(5.0, 0.3), "real")
    assert "fast: goal 4.0 s not met" in text and "cpu share 0.300 s, goal 0.2 s not met" in text
    assert "| speed-up" in text and "4.00" in text and "fast: step rewards equal to plain's" in text
    assert "x floor" in text and "5.6" in text  # 5 s against the step's 0.9 s floor


def test_a_failed_step_path_is_reported_and_fails_the_command():
    from coz_train.bench.run import failures

    step = step_result(3.0, 0.1)
    step["paths"]["fast_compiled"] = {"error": "OutOfMemoryError: CUDA out of memory"}
    text = step_table(step, "real")
    assert "FAILED fast_compiled: OutOfMemoryError" in text
    assert failures(dict(phases={}, step=step)) == ["step/fast_compiled"]


def test_differing_step_rewards_are_explained_when_lora_dropout_parts_the_random_draws():
    from coz_train.bench.report import reward_notes

    paths = {"plain": {"rewards": [1.0, 0.5]}, "fast": {"rewards": [1.0, 0.5]}, "other": {"rewards": [1.01, 0.5]}}
    notes = reward_notes(paths, ["plain", "fast", "other"], lora_dropout=0.05)
    assert notes[0] == "fast: step rewards equal to plain's (max |diff| 0)"
    assert notes[1].startswith("other: step rewards differ from plain's (max |diff| 0.01): expected with "
                               "policy.lora.lora_dropout=0.05")
    assert "expected" not in reward_notes(paths, ["plain", "other"], lora_dropout=0.0)[0]  # a difference to look into
