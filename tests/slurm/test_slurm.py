"""slurm/*.sbatch on a real one-node SLURM cluster (see conftest.py): gloo ranks, 2-process training,
preemption -> requeue -> resume. Jobs run the interpreter running these tests (sys.executable)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "slurm" / "train.sbatch"
EVAL = ROOT / "slurm" / "eval.sbatch"
CPU_CONFIG = "recipes/accelerate_configs/cpu.yaml"
# The cluster has no GPUs: the scripts' `--gpus-per-node` default is overridden; `-c 1`/`--exclusive`
# keep to the node's CPUs.
NO_GPU = ["--gpus-per-node=0"]


def job_env(**extra: str) -> dict[str, str]:
    """The job's environment: this interpreter's bin first on PATH (accelerate, python)."""
    bin_dir = str(Path(sys.executable).parent)
    return {"PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]), "PYTHON": sys.executable,
            "OMP_NUM_THREADS": "1", **extra}


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else f"<{path} missing>"


def steps_logged(run: Path) -> list[int]:
    """Optimizer steps with a training entry (a loss) in log_history.jsonl."""
    steps = []
    for line in read(run / "log_history.jsonl").splitlines():
        entry = json.loads(line)
        if "loss" in entry:
            steps.append(int(entry["step"]))
    return steps


def test_gloo_all_reduce_across_two_tasks(slurm, tmp_path):
    """The cluster itself: `sbatch -n 2` + srun start two ranks that form a gloo group."""
    port = 20000 + os.getpid() % 20000
    code = (
        "import os, torch, torch.distributed as dist;"
        f"dist.init_process_group('gloo', init_method='tcp://127.0.0.1:{port}',"
        " rank=int(os.environ['SLURM_PROCID']), world_size=int(os.environ['SLURM_NTASKS']));"
        "t = torch.tensor([dist.get_rank() + 1.0]); dist.all_reduce(t);"
        "print(f'rank {dist.get_rank()}/{dist.get_world_size()} sum {t.item():.0f}', flush=True);"
        "dist.destroy_process_group()"
    )
    script = tmp_path / "allreduce.sbatch"
    script.write_text(f'#!/bin/bash\nsrun "{sys.executable}" -c "{code}"\n')
    out = tmp_path / "job.out"
    job = slurm.submit(script, sbatch_args=["-n", "2", "-o", str(out)], env=job_env(), cwd=tmp_path)
    state = slurm.wait(job, timeout=120)
    log = read(out)
    assert state == "COMPLETED", f"{state}\n{log}\n{slurm.logs()}"
    assert sorted(re.findall(r"rank (\d)/2 sum 3", log)) == ["0", "1"], log


def test_train_sbatch_two_cpu_processes(slurm, tmp_path):
    """train.sbatch: one accelerate launch with 2 gloo ranks trains the smoke run to the end; rank 0 logs."""
    run, out = tmp_path / "run", tmp_path / "train.out"
    job = slurm.submit(
        TRAIN, "+experiment=smoke", "grpo.max_steps=4", "grpo.save_steps=2",
        sbatch_args=[*NO_GPU, "-o", str(out)], cwd=ROOT,
        env=job_env(ACCELERATE_CONFIG=CPU_CONFIG, NUM_PROCESSES_PER_NODE="2", RUN_DIR=str(run)),
    )
    state = slurm.wait(job, timeout=300)
    log = read(out)
    assert state == "COMPLETED", f"{state}\n{log[-6000:]}"
    assert "1 node(s) x 2 process(es)" in log, log[-3000:]
    assert (run / "adapter" / "adapter_model.safetensors").is_file(), log[-4000:]
    # One process group of 2 (the Trainer saves one RNG state per rank), not 2 lone trainers.
    rng = sorted(p.name for p in (run / "checkpoint-4").glob("rng_state*.pth"))
    assert rng == ["rng_state_0.pth", "rng_state_1.pth"], rng
    assert [p.relative_to(run) for p in run.rglob("train.log")] == [Path("train.log")]
    train_log = read(run / "train.log")
    assert train_log.count("GRPO:") == 1, f"more than one rank wrote train.log:\n{train_log[-3000:]}"
    assert steps_logged(run) == [1, 2, 3, 4], read(run / "log_history.jsonl")


def test_train_sbatch_preempted_requeued_resumed(slurm, tmp_path):
    """SIGUSR1 to the batch shell (as `--signal=B:USR1@120` sends it) -> the ranks save and exit ->
    the job requeues itself -> the second run resumes from the checkpoint and finishes every step."""
    max_steps, save_steps = 40, 5
    run, out = tmp_path / "run", tmp_path / "train.out"
    job = slurm.submit(
        TRAIN, "+experiment=smoke", f"grpo.max_steps={max_steps}", f"grpo.save_steps={save_steps}",
        "grpo.max_completion_length=24", "logging.sample_every=0",
        sbatch_args=[*NO_GPU, "-o", str(out)], cwd=ROOT,
        env=job_env(ACCELERATE_CONFIG=CPU_CONFIG, NUM_PROCESSES_PER_NODE="2", RUN_DIR=str(run)),
    )
    first = run / f"checkpoint-{save_steps}" / "COMPLETE"
    deadline = time.monotonic() + 240
    while not first.exists():
        state = slurm.state(job)
        assert state in {"PENDING", "RUNNING", "CONFIGURING"}, f"{state} before the first checkpoint:\n{read(out)}"
        assert time.monotonic() < deadline, f"no {first} after 240 s:\n{read(out)[-4000:]}"
        time.sleep(0.2)
    slurm.signal(job, "USR1", "--batch")

    # The script requeues the job; a requeued job waits ~120 s (BeginTime) unless started by hand.
    try:
        slurm.start_requeued(job, timeout=120)
    except (AssertionError, TimeoutError) as e:
        raise AssertionError(f"{e}\n{read(out)[-6000:]}") from None
    state = slurm.wait(job, timeout=300)
    log = read(out)
    assert state == "COMPLETED", f"{state}\n{log[-8000:]}"

    assert "SIGUSR1 received: sending SIGUSR1" in log and "requeueing job" in log, log[-6000:]
    assert "SLURM_RESTART_COUNT=0" in log and "SLURM_RESTART_COUNT=1" in log, log[-6000:]
    train_log = read(run / "train.log")
    assert "SIGUSR1" in train_log, f"the trainer did not report the signal:\n{train_log[-4000:]}"
    resumed = re.findall(r"resume=auto: \S*checkpoint-(\d+)", train_log + log)
    assert resumed and int(resumed[-1]) >= save_steps, f"the second run did not resume:\n{train_log[-4000:]}"

    final = run / f"checkpoint-{max_steps}"
    state_json = json.loads(read(final / "trainer_state.json"))
    assert state_json["global_step"] == max_steps
    steps = steps_logged(run)
    assert sorted(set(steps)) == list(range(1, max_steps + 1)), steps
    assert len(steps) == max_steps, f"steps logged twice (a rerun instead of a resume?): {steps}"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_train_sbatch_requeued_after_it_finished_changes_nothing(slurm, tmp_path):
    """A job that had finished, requeued (`scontrol requeue`, as an admin or a failed epilog does): the second run
    says the run is finished, trains no step and leaves the adapter and the checkpoints byte for byte."""
    run, out = tmp_path / "run", tmp_path / "train.out"
    job = slurm.submit(
        TRAIN, "+experiment=smoke", "grpo.max_steps=4", "grpo.save_steps=2", "logging.sample_every=0",
        sbatch_args=[*NO_GPU, "-o", str(out)], cwd=ROOT,
        env=job_env(ACCELERATE_CONFIG=CPU_CONFIG, NUM_PROCESSES_PER_NODE="2", RUN_DIR=str(run)),
    )
    assert slurm.wait(job, timeout=300) == "COMPLETED", read(out)[-6000:]

    def snapshot() -> dict[str, tuple[bytes, int]]:
        files = [p for p in run.rglob("*") if p.is_file() and "wandb" not in p.parts and p.name != "train.log"
                 and p.suffix != ".jsonl" and ".hydra" not in p.parts]
        return {str(p.relative_to(run)): (hashlib.sha256(p.read_bytes()).digest(), p.stat().st_mtime_ns)
                for p in files}

    before, history = snapshot(), read(run / "log_history.jsonl")
    assert "adapter/adapter_model.safetensors" in before and "checkpoint-4/COMPLETE" in before, sorted(before)
    slurm.requeue(job)
    try:
        slurm.start_requeued(job, timeout=120)
    except (AssertionError, TimeoutError) as e:
        raise AssertionError(f"{e}\n{read(out)[-6000:]}") from None
    assert slurm.wait(job, timeout=300) == "COMPLETED", read(out)[-6000:]
    log = read(out)
    assert "SLURM_RESTART_COUNT=1" in log, log[-4000:]
    assert "This run is finished (checkpoint-4 is at max_steps" in read(run / "train.log") + log, log[-4000:]
    assert snapshot() == before  # nothing rewritten, not even with the same bytes
    assert read(run / "log_history.jsonl") == history and steps_logged(run) == [1, 2, 3, 4]


def test_slurm_launcher_config_composes():
    """`hydra/launcher=slurm` composes on submitit_slurm; cluster values come from the environment."""
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        pytest.fail("hydra-submitit-launcher is not installed: pip install hydra-submitit-launcher==1.2.0")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from coz_train.config import config_dir, register_configs

    def launcher(env: dict[str, str]):
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            GlobalHydra.instance().clear()
            register_configs()
            with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
                cfg = compose(config_name="config", overrides=["+experiment=smoke", "hydra/launcher=slurm"],
                              return_hydra_config=True)
            return {k: cfg.hydra.launcher[k] for k in
                    ("_target_", "partition", "account", "timeout_min", "gpus_per_node", "mem_gb")}
        finally:
            for k, v in old.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
            GlobalHydra.instance().clear()

    defaults = launcher({})
    assert defaults["_target_"].endswith("SlurmLauncher")
    if "SBATCH_PARTITION" not in os.environ:
        assert defaults["partition"] is None
    custom = launcher({"SBATCH_PARTITION": "gpu-test", "SBATCH_ACCOUNT": "proj", "COZ_SLURM_TIMEOUT_MIN": "30",
                       "COZ_SLURM_MEM_GB": "64"})
    assert (custom["partition"], custom["account"], custom["timeout_min"], custom["mem_gb"]) == ("gpu-test", "proj", 30, 64)


def test_eval_sbatch_smoke(slurm, tmp_path):
    """eval.sbatch: one CPU process runs the smoke evaluation into RUN_DIR."""
    run, out = tmp_path / "run", tmp_path / "eval.out"
    job = slurm.submit(
        EVAL, "+experiment=smoke_eval", "eval.metrics=[psnr,ssim]", "eval.shipped_images=[astronaut]",
        sbatch_args=[*NO_GPU, "-c", "1", "-o", str(out)], cwd=ROOT, env=job_env(RUN_DIR=str(run)),
    )
    state = slurm.wait(job, timeout=300)
    log = read(out)
    assert state == "COMPLETED", f"{state}\n{log[-6000:]}"
    assert (run / "results.md").is_file() and (run / "results.csv").is_file(), log[-4000:]
    assert "[eval.sbatch] exited with 0" in log


def test_hydra_slurm_launcher_submits_and_collects(slurm_accounting, tmp_path):
    """`-m hydra/launcher=slurm`: submitit submits the smoke run as a job and collects its result
    (submitit reads the final state from accounting: sacct -> slurmdbd -> mariadb)."""
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "coz_train", "-m", "hydra/launcher=slurm", "+experiment=smoke", "grpo.max_steps=2",
         "grpo.save_steps=2", "logging.sample_every=0", f"hydra.sweep.dir={sweep}",
         "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=60"],
        env={**slurm_accounting.env, **job_env()}, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    job_logs = "\n".join(read(p)[-3000:] for p in sweep.glob(".submitit/*/*.out")) if sweep.exists() else ""
    assert result.returncode == 0, f"{output[-4000:]}\n{job_logs}"
    assert (sweep / "0" / "adapter" / "adapter_model.safetensors").is_file(), f"{output[-4000:]}\n{job_logs}"
    assert list(sweep.glob(".submitit/*/*_submitted.pkl")), "not submitted through submitit"


def test_data_sbatch_array_builds_the_shards_training_merges(slurm, tmp_path, make_config, monkeypatch):
    """data.sbatch as a 2-task array: each task builds its shard's parts; the unsharded build only merges them."""
    import coz_train.data.chains as chains
    from coz_train.data import build_zoom_dataset

    cache = tmp_path / "cache"
    overrides = ["+experiment=smoke", "data.process_size=32", "data.depth=2", "data.max_images=null",
                 "data.shipped_images=[astronaut,coffee,chelsea]", "data.upscaler=realesrgan_x4plus",
                 "data.chunk_images=1", f"data.cache_dir={cache}"]
    job = slurm.submit(ROOT / "slurm" / "data.sbatch", *overrides, cwd=tmp_path, env=job_env(),
                       sbatch_args=[*NO_GPU, "-c", "1", "--array=0-1", "-o", str(tmp_path / "data-%a.out")])
    for task in (0, 1):
        state = slurm.wait(f"{job}_{task}", timeout=300)
        log = read(tmp_path / f"data-{task}.out")
        assert state == "COMPLETED", f"{state}\n{log[-6000:]}"
        assert f"shard {task} of 2" in log and "[data.sbatch] exited with 0" in log
    parts = sorted(p.name for p in cache.glob("*.parts/part-*"))
    assert parts == ["part-000000", "part-000001", "part-000002"]
    assert not [p for p in cache.iterdir() if not p.name.endswith(".parts")]  # nothing published by a shard

    def no_build(*args, **kwargs):
        raise AssertionError("a part was rebuilt")

    monkeypatch.setattr(chains.ChainBuilder, "rows", no_build)
    ds = build_zoom_dataset(make_config(*overrides).data, seed=0)
    assert len(ds) == 3 * 2 and sorted(set(ds["source"])) == ["skimage:astronaut", "skimage:chelsea", "skimage:coffee"]
