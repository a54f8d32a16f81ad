"""A wheel built from the checkout, installed outside it, runs the offline smoke experiment.

The wheel goes into a new virtual environment whose only other packages are this environment's
(a .pth file names its site-packages, so torch is not installed twice); the run starts in a
folder outside the checkout, so nothing can be imported from the source tree.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUILD_OUTPUTS = ("build", "dist", "*.egg-info", "__pycache__", ".git", ".venv", ".ci-venv", ".official-venv", "outputs",
                 "multirun", "wandb", ".pytest_cache", ".ruff_cache")


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{(result.stdout + result.stderr)[-4000:]}"
    return result


def package_modules(root: Path) -> set[str]:
    """Every .py module, .yaml config and study web page of the source tree, as wheel paths."""
    found = {f"coz_train/{p.relative_to(root / 'coz_train')}" for p in (root / "coz_train").rglob("*.py")}
    pages = [p for sub in ("templates", "static") for p in (root / "coz_train" / "study" / sub).iterdir()]
    found |= {f"coz_train/{p.relative_to(root / 'coz_train')}" for p in pages}
    found |= {f"coz_train/conf/{p.relative_to(root / 'conf')}" for p in (root / "conf").rglob("*.yaml")}
    return {p for p in found if "__pycache__" not in p}


def test_wheel_installs_and_trains_outside_the_checkout(tmp_path):
    # a copy without build outputs: setuptools would pack stale files left in build/lib
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*BUILD_OUTPUTS))
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(source)], cwd=tmp_path)
    (wheel,) = dist.glob("coz_train-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    missing = sorted(package_modules(REPO) - shipped)
    assert not missing, f"the wheel lacks {missing}"

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
    Path(site.stdout.strip(), "main_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(python), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)], cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([str(python), "-c", "import coz_train; print(coz_train.__file__)"], cwd=elsewhere)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    out = elsewhere / "run"
    env = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run(
        [str(python), "-m", "coz_train", "+experiment=smoke", "grpo.max_steps=2", "grpo.save_steps=2",
         "logging.wandb=false", f"hydra.run.dir={out}"],
        cwd=elsewhere, capture_output=True, text=True, timeout=900, env=env,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "checkpoint-2" / "COMPLETE").is_file()
