"""One error style in every command line (coz_train/cli.py).

Each command is run as a user runs it, with a bad input of the package's own kind that fails within
seconds, before any model loads: one `Error:` line on stderr, exit code 1, no traceback on the console but
in the run's log; `HYDRA_FULL_ERROR=1` (Hydra commands) or `--debug` (argparse ones) shows it. A misspelt key,
a value of the wrong type and an unknown config option on the command line are one line too, naming the
closest valid keys or options.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from omegaconf.errors import ConfigKeyError

from coz_train.cli import check_overrides, command_line_overrides, config_error_line, report
from coz_train.hub import ModelNotAvailableError, resolve_model

MISSING = "/nonexistent/coz_train"  # a folder, model or adapter that is not there

# (command, arguments, what its line says, its log file under hydra.run.dir); `{run}` is the run folder
HYDRA_COMMANDS = {
    "coz_train": (["+experiment=smoke", f"data.image_dir={MISSING}"], f"data.image_dir='{MISSING}' is not a folder",
                  "train.log"),
    "coz_train.data": (["+experiment=smoke", f"data.image_dir={MISSING}"], "is not a folder", "data.log"),
    "coz_train.eval": (["+experiment=smoke_eval", f"eval.adapter={MISSING}", "eval.prompt_sources=[null,vlm+adapter]"],
                       "eval.adapter", "eval.log"),
    # the server's own offline advice, not the training command's
    "coz_train.critic_server": (["+experiment=smoke", f"critic.name_or_path={MISSING}", "server.port=0"],
                                "python -m coz_train.critic_server critic=tiny", "critic_server.log"),
    "coz_train.bench": (["bench.size=huge"], "bench.size='huge' is not one of", "bench.log"),
}
OTHER_COMMANDS = {  # no log file: --debug (study: HYDRA_FULL_ERROR=1) shows the traceback
    "coz_train.eval.checkpoints": ([MISSING, "+experiment=smoke_eval"], "is not a folder: give a training run folder"),
    "coz_train.eval.merge": ([MISSING], "is not the folder of a `python -m coz_train.eval` run"),
    "coz_train.critic_convert": (["{run}/llama", "{run}/converted"], "model_type 'llama', not 'internvl_chat'"),
    "coz_train.study": (["serve", MISSING], "manifest.json not found"),
}


def command(module: str, *args: str, full: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    if full:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip()][-1]


def assert_one_line(result: subprocess.CompletedProcess, says: str) -> str:
    assert result.returncode == 1, result.stderr[-3000:]
    line = last_line(result.stderr)
    assert line.startswith("Error: ") and says in line, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return line


@pytest.mark.slow
@pytest.mark.parametrize("module", HYDRA_COMMANDS)
def test_hydra_commands_show_their_own_errors_as_one_line(module, tmp_path):
    args, says, log_name = HYDRA_COMMANDS[module]
    run = tmp_path / "run"
    line = assert_one_line(command(module, *args, f"hydra.run.dir={run}"), says)
    log = run / log_name
    assert f"the traceback is in {log}" in line and "HYDRA_FULL_ERROR=1" in line
    if module == "coz_train.critic_server":
        assert "+experiment=smoke" not in line  # the training command's offline advice is not the server's
    assert "Traceback" in log.read_text() and says in log.read_text()

    full = command(module, *args, f"hydra.run.dir={tmp_path / 'full'}", full=True)
    assert full.returncode != 0 and "Traceback" in full.stderr and says in full.stderr


@pytest.mark.slow
@pytest.mark.parametrize("module", OTHER_COMMANDS)
def test_other_commands_show_their_own_errors_as_one_line(module, tmp_path):
    args, says = OTHER_COMMANDS[module]
    args = [arg.format(run=tmp_path) for arg in args]
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')  # not an InternVL checkpoint
    switch = "HYDRA_FULL_ERROR=1" if module == "coz_train.study" else "--debug"
    line = assert_one_line(command(module, *args), says)
    assert line.endswith(f"({switch} shows the traceback)")
    full = command(module, *args, full=True) if switch != "--debug" else command(module, *args, "--debug")
    assert full.returncode != 0 and "Traceback" in full.stderr and says in full.stderr


@pytest.mark.slow
@pytest.mark.parametrize("module", [*HYDRA_COMMANDS, "coz_train.eval.checkpoints"])
def test_a_misspelt_key_is_one_line_with_the_closest_keys_in_every_command(module, tmp_path):
    first = [str(tmp_path)] if module == "coz_train.eval.checkpoints" else []
    result = command(module, *first, "polcy.lora.r=4", f"hydra.run.dir={tmp_path / 'run'}")
    line = assert_one_line(result, "Could not override 'polcy.lora.r'")
    assert "the closest: policy.lora.r" in line
    assert not (tmp_path / "run").exists()  # stopped before Hydra made the run folder


@pytest.mark.slow
def test_a_value_of_the_wrong_type_is_one_line(tmp_path):
    result = command("coz_train", "+experiment=smoke", "grpo.max_steps=abc", f"hydra.run.dir={tmp_path}")
    line = assert_one_line(result, "Could not override 'grpo.max_steps' with 'abc'")
    assert "could not be converted to Integer" in line and "grpo.max_steps=20" in line  # the smoke run's value


# The override check and the error line themselves, in this process: Hydra's composition, no model library.

def stopped(capsys, *overrides: str) -> str:
    with pytest.raises(SystemExit) as stop:
        check_overrides(list(overrides))
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Error: ")
    return err


def test_misspelt_keys_name_the_closest_valid_keys(capsys):
    assert "grpo has no key 'max_stepz'; the closest: grpo.max_steps" in stopped(capsys, "grpo.max_stepz=3")
    assert "the config has no key 'polcy'; the closest: policy.lora.r" in stopped(capsys, "polcy.lora.r=4")
    # an open section (the rewards map) lists its keys; a large one says how to list them
    assert "its keys: critic, phrase_exclusion, repetition" in stopped(capsys, "rewards.nope.weight=1")
    assert "`python -m coz_train --cfg job --package grpo` lists its keys" in stopped(capsys, "grpo.qqqqqqqq=1")


def test_values_of_the_wrong_type_name_the_key_and_its_value(capsys):
    err = stopped(capsys, "+experiment=smoke", "grpo.max_steps=abc")
    assert "Could not override 'grpo.max_steps' with 'abc'" in err and "(the config has grpo.max_steps=20)" in err
    assert "policy.lora.r" in stopped(capsys, "policy.lora.r=[1,2]")
    assert "is not Optional" in stopped(capsys, "critic.name_or_path=null")


def test_unknown_config_options_name_the_options_of_their_group(capsys):
    err = stopped(capsys, "critic=tinyy")
    assert "the config group critic has no option 'tinyy'" in err and "(the closest: tiny)" in err
    assert "internvl2_5_8b, internvl2_5_8b_remote, qwen2_5_vl_7b, server, tiny" in err
    assert "(the closest: smoke)" in stopped(capsys, "+experiment=smok")
    assert "eval/backbone" in stopped(capsys, "eval/backbone=realesrgan")


def test_what_the_check_leaves_to_hydra(capsys, monkeypatch):
    for overrides in (["critic=tiny", "+experiment=smoke", "hydra.run.dir=/tmp/x", "rewards.critic.weight=2"],
                      ["+grpo.new_key=1"],  # adding a key: Hydra decides
                      ["~logging.run_name", "++seed=3"],
                      ["data.image_dir=a,b"],  # a sweep without --multirun: Hydra's own report
                      ["grpo.max_steps=1)"]):  # not Hydra's override grammar: Hydra's own report
        check_overrides(overrides)
    assert capsys.readouterr().err == ""
    assert command_line_overrides(["-m", "grpo.max_stepz=1,2"]) is None  # a sweep composes per job
    assert command_line_overrides(["--cfg", "job", "-p", "grpo", "seed=1", "~x"]) == ["seed=1", "~x"]
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    check_overrides(["grpo.max_stepz=3"])  # Hydra's full report instead
    assert capsys.readouterr().err == ""


def test_report_keeps_the_traceback_of_library_errors(capsys):
    def raise_inside_a_library() -> None:
        import json

        json.loads("{")

    try:
        raise_inside_a_library()
    except ValueError as err:
        assert not report(err, full=False, hint="h")
    try:
        resolve_model(MISSING, "policy.name_or_path")  # the package's own error, advice on several lines
    except ModelNotAvailableError as err:
        assert not report(err, full=True, hint="h")  # HYDRA_FULL_ERROR=1 / --debug
        assert report(err, full=False, hint="--debug shows the traceback")
    assert report(ConfigKeyError("a library's error the command counts as its own"), full=False, hint="",
                  own=(ConfigKeyError,))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("Error: ") for line in err)
    assert err[0].startswith(f"Error: policy.name_or_path='{MISSING}' cannot be loaded:")
    assert " - check the path - or point policy.name_or_path at a local copy" in err[0]
    assert err[0].endswith(" (--debug shows the traceback)")
    assert err[1] == "Error: a library's error the command counts as its own"
    assert config_error_line(ValueError("x")) is None
