"""The smoke experiment under 2 CPU processes (gloo), with DDP and with DeepSpeed ZeRO-2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("rank_driver.py")
REPO = Path(__file__).resolve().parents[2]


def launch(tmp_path, *launch_args, timeout=900, overrides=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", *launch_args, str(DRIVER), str(tmp_path), *overrides],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return tmp_path / "run"


def check_two_ranks(out: Path, run: Path, zero_stage: int | None = None) -> None:
    worlds = [json.loads((out / f"world.rank{r}.json").read_text()) for r in (0, 1)]
    assert all(w["world_size"] == 2 and w["zero_stage"] == zero_stage for w in worlds)
    assert all(w["policy_partitioned"] == (zero_stage == 3) for w in worlds)
    # each rank scores with its own whole, frozen critic: never sharded or trained
    assert all(w["critic_params"] > 0 and not w["critic_partitioned"] and not w["critic_trainable"] for w in worlds)
    # both ranks hold the same adapter at the end
    a0, a1 = (torch.load(out / f"adapter.rank{r}.pt") for r in (0, 1))
    assert a0.keys() == a1.keys() and len(a0) > 0 and all(t.numel() > 0 for t in a0.values())
    for name in a0:
        torch.testing.assert_close(a0[name], a1[name], rtol=0, atol=0)
    # the logged reward mean is over both ranks' completions (gathered), not rank 0's alone
    per_rank = [[json.loads(line) for line in (out / f"rewards.rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    logged = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines() if '"reward"' in line]
    assert [e["step"] for e in logged] == [1, 2, 3, 4]
    for entry in logged:
        values = [v for rank in per_rank for rec in rank if rec["step"] == entry["step"] for v in rec["values"]]
        assert len(values) == 2 * 8  # two ranks x 8 completions per step
        assert entry["rewards/recorded_phrase/mean"] == pytest.approx(sum(values) / len(values), abs=1e-6)
    # only rank 0 wrote logs and checkpoints
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert len((run / "log_history.jsonl").read_text().splitlines()) == 5  # 4 steps + the summary, once


def test_ddp_two_cpu_processes(tmp_path):
    run = launch(tmp_path, "--multi_gpu")
    check_two_ranks(tmp_path, run)


def test_deepspeed_zero2_two_cpu_processes(tmp_path):
    pytest.importorskip("deepspeed", reason="install the `distributed` extra (deepspeed) to run ZeRO tests")
    run = launch(tmp_path, "--config_file", str(REPO / "recipes" / "accelerate_configs" / "zero2.yaml"),
                 timeout=1200)
    check_two_ranks(tmp_path, run, zero_stage=2)


def test_deepspeed_zero3_leaves_the_critic_whole(tmp_path):
    pytest.importorskip("deepspeed", reason="install the `distributed` extra (deepspeed) to run ZeRO tests")
    run = launch(tmp_path, "--config_file", str(REPO / "recipes" / "accelerate_configs" / "zero3.yaml"),
                 timeout=1200)
    check_two_ranks(tmp_path, run, zero_stage=3)


def test_ddp_perf_fast_trains_like_plain(tmp_path):
    """Every perf switch under DDP: ranks agree, and the adapter is the plain run's (dropout off: deterministic)."""
    runs = {}
    for name in ("plain", "fast"):
        out = tmp_path / name
        out.mkdir()
        runs[name] = out
        run = launch(out, "--multi_gpu", overrides=[f"perf={name}", "policy.lora.lora_dropout=0"])
        check_two_ranks(out, run)
    plain, fast = (torch.load(runs[name] / "adapter.rank0.pt") for name in ("plain", "fast"))
    for key in plain:
        torch.testing.assert_close(fast[key], plain[key], rtol=0, atol=1e-4)


def test_deepspeed_zero3_with_the_shared_prefix_passes(tmp_path):
    """ZeRO-3 gathers the sharded weights for the prefix and continuation passes; merging adapters and the
    vision cache (ranks would skip each other's gathers) are refused before any model loads."""
    pytest.importorskip("deepspeed", reason="install the `distributed` extra (deepspeed) to run ZeRO tests")
    config = str(REPO / "recipes" / "accelerate_configs" / "zero3.yaml")
    run = launch(tmp_path, "--config_file", config, timeout=1200,
                 overrides=["perf=fast", "perf.merge_adapters_for_generation=false", "perf.vision_cache=false"])  # pixel handles step aside
    check_two_ranks(tmp_path, run, zero_stage=3)
    refused = tmp_path / "refused"
    refused.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--config_file", config, str(DRIVER), str(refused),
         "perf=fast"],
        capture_output=True, text=True, timeout=1200, env=env, cwd=REPO,
    )
    assert result.returncode != 0
    assert "perf.vision_cache does not work with DeepSpeed ZeRO-3" in result.stdout + result.stderr
