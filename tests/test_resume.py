"""Preemption and crashes: a signal saves and exits for requeue; a killed run resumes to the same adapter."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from coz_train.checkpoints import COMPLETE_MARKER, checkpoints, latest_complete
from coz_train.preemption import PREEMPTED_EXIT_CODE

pytestmark = pytest.mark.slow

SMOKE = ["+experiment=smoke", "logging.wandb=false", "rewards.critic.weight=0.5"]


def launch(run, *overrides):
    return subprocess.Popen([sys.executable, "-m", "coz_train", *SMOKE, f"hydra.run.dir={run}", *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def logged_steps(run):
    path = run / "log_history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if '"reward"' in line]


def wait_for(predicate, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError


def test_signal_saves_a_checkpoint_and_exits_for_requeue(tmp_path):
    run = tmp_path / "run"
    proc = launch(run, "grpo.max_steps=500", "grpo.save_steps=1000")
    wait_for(lambda: len(logged_steps(run)) >= 3)
    proc.send_signal(signal.SIGUSR1)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    [(step, folder, complete)] = checkpoints(run)
    assert complete and step == max(logged_steps(run))
    assert "resume=auto" in output

    resumed = launch(run, f"grpo.max_steps={step + 3}", "grpo.save_steps=1000", "resume=auto")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output[-3000:]
    assert logged_steps(run) == list(range(1, step + 4))  # no step lost, none repeated
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_sigkill_then_resume_gives_the_same_adapter_as_an_uninterrupted_run(tmp_path):
    common = ["grpo.max_steps=8", "grpo.save_steps=2", "seed=3"]
    reference = launch(tmp_path / "reference", *common)
    output, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, output[-3000:]

    run = tmp_path / "killed"
    victim = launch(run, *common)
    wait_for(lambda: len(logged_steps(run)) >= 5)  # past checkpoint-4, maybe in the middle of a later save
    victim.kill()
    victim.communicate()
    assert latest_complete(run) is not None
    resumed = launch(run, *common, "resume=auto")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output[-3000:]

    expected = load_file(tmp_path / "reference" / "adapter" / "adapter_model.safetensors")
    got = load_file(run / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        # one thread on the CPU: the same operations in the same order, so bit-identical
        assert torch.equal(expected[name], got[name]), name


def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / COMPLETE_MARKER).write_text("ok")
    assert latest_complete(tmp_path) == tmp_path / "checkpoint-4"
    assert not (tmp_path / "checkpoint-6").exists()  # moved aside, so a later save cannot mix with it
    assert [p.name.startswith("checkpoint-6.incomplete") for p in tmp_path.iterdir()].count(True) == 1


def test_a_finished_run_resumed_changes_nothing_and_a_missing_final_adapter_comes_from_the_last_checkpoint(
        make_config, tmp_path):
    from coz_train.train import train

    overrides = ["+experiment=smoke", "rewards.critic.weight=0", "grpo.max_steps=4", "grpo.save_steps=2",
                 "logging.wandb=false"]
    adapter = train(make_config(*overrides))
    run = adapter.parent
    for folder, step in ((adapter, 4), (run / "checkpoint-2", 2), (run / "checkpoint-4", 4)):  # the project's card
        card = (folder / "README.md").read_text()
        assert "tiny:qwen2_5_vl" in card and "R = 0.5 * phrase_exclusion + 0.5 * repetition" in card, card
        assert f"GRPO steps: {step} / 4" in card and "huggingface.co/None" not in card
    assert "huggingface.co/None" not in (run / "README.md").read_text()
    files = {p.name: p.read_bytes() for p in adapter.iterdir()}
    state = (run / "checkpoint-4" / "trainer_state.json").read_text()
    assert not (run / "adapter.partial").exists()

    # a requeued job of a finished run: says so, trains no step 5, rewrites nothing
    again = train(make_config(*overrides, "resume=auto"))
    assert again == adapter and {p.name: p.read_bytes() for p in adapter.iterdir()} == files
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (run / "checkpoint-4" / "trainer_state.json").read_text() == state

    # killed after checkpoint-4 was complete but before adapter/ was written: the final adapter is that checkpoint's
    import shutil

    expected = load_file(str(adapter / "adapter_model.safetensors"))
    shutil.rmtree(adapter)
    train(make_config(*overrides, "resume=auto"))
    got = load_file(str(adapter / "adapter_model.safetensors"))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    assert (adapter / "README.md").read_text() == (run / "checkpoint-4" / "README.md").read_text()
    assert not (run / "checkpoint-5").exists()
