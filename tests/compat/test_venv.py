"""The scratch venv: layered over the running environment, kept with --reuse, never deleted when not its own."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from coz_train.compat.venv import MARKER, installed_versions, layered_over, prepare_venv, venv_python


def test_a_layered_venv_sees_the_running_environment_and_is_made_again(tmp_path):
    venv = tmp_path / "scratch"
    assert prepare_venv(venv, reuse=False, isolated=False) == f"created {venv}, layered over {sys.prefix}"
    python = venv_python(venv)
    assert layered_over(venv) == sys.prefix
    assert installed_versions(python, ("packaging", "not-a-package-anywhere")) == {
        "packaging": importlib.metadata.version("packaging"), "not-a-package-anywhere": None}
    own_site = subprocess.run([str(python), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                              check=True).stdout.strip()
    assert Path(own_site) == venv  # its own interpreter prefix: pip installs go there, not into the base
    (venv / "left-over").write_text("x")
    assert prepare_venv(venv, reuse=True, isolated=False) == f"reused {venv}" and (venv / "left-over").exists()
    prepare_venv(venv, reuse=False, isolated=False)  # made by the check: made again
    assert not (venv / "left-over").exists() and (venv / MARKER).is_file()


def test_a_folder_the_check_did_not_make_is_never_deleted(tmp_path):
    other = tmp_path / "project-env"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match=r"project-env exists and was not made by this check: pass --reuse"):
        prepare_venv(other, reuse=False, isolated=False)
    with pytest.raises(ValueError, match=r"--reuse: .*project-env has no bin/python"):
        prepare_venv(other, reuse=True, isolated=False)
    with pytest.raises(ValueError, match=r"was not made by this check"):
        prepare_venv(Path(sys.prefix), reuse=False, isolated=False)
    assert (other / "keep.txt").exists()
