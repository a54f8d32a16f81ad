"""`python -m coz_train.compat` end to end, cheaply: the running environment as the venv, one quick perf test."""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coz_train.compat.bounds import LIBRARIES
from coz_train.compat.project import find_checkout, switch_names
from coz_train.compat.verdicts import FAST_PATH

CHECKOUT = find_checkout(None).root
QUICK_TEST = "test_an_own_attribute_comes_back_as_the_same_object"  # tests/perf/test_replacement.py, no model
ENV = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}


def compat(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coz_train.compat", *args], cwd=CHECKOUT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def installed() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in LIBRARIES]


def test_the_capability_check_and_one_perf_test_in_the_running_environment(tmp_path):
    done = compat("--venv", sys.prefix, "--no-install", "--only", "capabilities", "perf-tests", "-k", QUICK_TEST,
                  "--versions", *installed(), "--logs", str(tmp_path / "logs"), "--out", str(tmp_path / "report.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["holds"] and report["partial"] and report["venv_note"] == "used as it is, --no-install"
    assert [lib["name"] for lib in report["libraries"]] == list(LIBRARIES)
    assert all(lib["installed"] == lib["newest"] and lib["newest_from"] == "given" for lib in report["libraries"])
    capabilities, run = report["runs"]
    assert capabilities["name"] == "capabilities" and capabilities["status"] == "pass"
    assert capabilities["commands"] == [[sys.executable, "-m", "coz_train.perf.capabilities",
                                         f"--json={tmp_path / 'logs' / 'capabilities.json'}"]]
    assert {c["status"] for c in report["capabilities"]} == {"holds"}
    assert {c["switch"] for c in report["capabilities"]} == set(switch_names(CHECKOUT / "coz_train/perf/capabilities.py"))
    assert "perf.group_prefix" in done.stdout and "backbone forward(cache=)" in done.stdout
    assert run["name"] == "perf-tests" and run["status"] == "pass" and Path(run["junit"]).is_file()
    (command,) = run["commands"]
    assert "--continue-on-collection-errors" in command and "-k" in command
    fast_path = next(v for v in report["switches"] if v["subject"] == FAST_PATH)
    assert fast_path["status"] == "holds"
    assert fast_path["passed"] == [f"tests/perf/test_replacement.py::{QUICK_TEST}"]
    assert {v["status"] for v in report["switches"] if v["subject"] != FAST_PATH} == {"not run"}
    assert "1 passed" in Path(run["log"]).read_text()
    assert "Everything checked holds. (partial run)" in done.stdout
    assert "compat: perf equality tests (tests/perf): pass in" in done.stderr


def test_a_selection_that_runs_no_test_does_not_hold(tmp_path):
    done = compat("--venv", sys.prefix, "--no-install", "--only", "perf-tests", "-k", "no_test_is_named_like_this",
                  "--versions", *installed(), "--logs", str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BREAKS: do not widen." in done.stdout and "no perf test ran (pytest collected none for -k" in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--only", "everything"], "argument --only: invalid choice: 'everything'"),
    (["--versions", "torch==2.15.0"], "Error: --versions 'torch==2.15.0': torch is not one of the checked libraries"),
    (["--no-install", "--venv", "/nonexistent/venv"], "Error: --no-install: /nonexistent/venv has no bin/python"),
    (["--no-install", "--unpin", "huggingface_hub"], "Error: --no-install runs in the venv as it is: leave out"),
    (["--checkout", "/"], "Error: /pyproject.toml is missing: --checkout must name a coz_train source checkout"),
])
def test_usage_errors_exit_2_with_the_reason(args, message):
    done = compat(*args, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_the_commands_own_process_imports_no_torch():
    code = ("import sys, runpy\nsys.argv = ['compat', '--help']\ntry:\n    runpy.run_module('coz_train.compat', "
            "run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'trl', 'peft', 'hydra'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert done.stdout.strip().endswith("[]"), done.stdout + done.stderr
