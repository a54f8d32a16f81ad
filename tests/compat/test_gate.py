"""The checks' processes run with TESTED widened to the installed versions: as a pytest plugin and as a runner."""

import importlib.metadata
import os
import subprocess
import sys
import textwrap

import coz_train.perf.versions as versions
from coz_train.compat.bounds import minor_of as minor
from coz_train.compat.gate import widen_tested

ENV = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}


def installed_minor(name):
    return minor(importlib.metadata.version(name))


def test_widening_adds_the_installed_minor_versions_in_place(monkeypatch):
    tested = {"transformers": ("4.0",), "trl": "0.1", "peft": (installed_minor("peft"),)}
    monkeypatch.setattr(versions, "TESTED", tested)
    assert versions.untested_versions().keys() == {"transformers", "trl"}
    added = widen_tested()
    assert added == {"transformers": (["4.0"], installed_minor("transformers")), "trl": (["0.1"], installed_minor("trl"))}
    assert versions.TESTED is tested and tested["transformers"] == ("4.0", installed_minor("transformers"))
    assert tested["trl"] == installed_minor("trl") and versions.untested_versions() == {}
    assert widen_tested() == {}  # nothing left to add


def test_the_plugin_lets_the_perf_tests_past_the_gate(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(  # a gate that knows none of the installed versions
        "import coz_train.perf.versions as v\nfor name in v.TESTED:\n    v.TESTED[name] = ('0.0',)\n")
    (tmp_path / "test_switch.py").write_text(textwrap.dedent("""
        from omegaconf import OmegaConf
        from coz_train.perf.versions import check_tested_versions

        def test_a_switch_passes_the_gate():
            check_tested_versions(OmegaConf.create({"group_prefix": True, "allow_untested_versions": False}))
    """))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_switch.py"]
    refused = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "perf.allow_untested_versions=true" in refused.stdout
    widened = subprocess.run([*command, "-p", "coz_train.compat.gate"], cwd=tmp_path, env=ENV, capture_output=True,
                             text=True, timeout=120)
    assert widened.returncode == 0, widened.stdout + widened.stderr
    assert "TESTED widened in this process: transformers 0.0 + " in widened.stderr


def test_the_runner_runs_a_module_as_python_dash_m_would_with_the_gate_widened(tmp_path):
    (tmp_path / "probe.py").write_text(textwrap.dedent("""
        import sys
        from coz_train.perf.versions import TESTED, untested_versions
        if __name__ == "__main__":
            print("argv", sys.argv[1:], "untested", untested_versions(), "trl", TESTED["trl"])
    """))
    narrowed = ("import sys, coz_train.perf.versions as v; v.TESTED['trl'] = ('0.0',); "
                "from coz_train.compat.gate import main; main(sys.argv[1:])")
    done = subprocess.run([sys.executable, "-c", narrowed, "probe", "key=value", "+experiment=smoke"], cwd=tmp_path,
                          env=dict(ENV, PYTHONPATH=str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    trl = installed_minor("trl")
    assert done.stdout.strip() == f"argv ['key=value', '+experiment=smoke'] untested {{}} trl ('0.0', '{trl}')"
