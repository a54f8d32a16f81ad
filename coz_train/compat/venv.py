"""The scratch environment the checks run in, and the install of the checkout into it.

By default the scratch venv is layered over the environment that runs the check, as `.ci/official-env`
builds its second environment: a `.pth` file names that environment's site-packages, the venv's own packages
come first on sys.path, and pip installs into the venv only what the constraints ask to differ (torch and the
CUDA wheels are not installed twice). `--isolated` installs everything from nothing, as `.ci/run` does.
A folder the check did not make is never deleted: it carries a marker file when the check made it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

MARKER = "coz-train-compat.json"
LAYER_PTH = "base_environment.pth"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def base_site_packages() -> list[str]:
    """The running environment's site-packages folders (pure and platform-specific)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def prepare_venv(venv: Path, *, reuse: bool, isolated: bool) -> str:
    """Create (or, with `reuse`, keep) the scratch venv; returns what was done, in words."""
    if venv.exists():
        if reuse:
            if not venv_python(venv).is_file():
                raise ValueError(f"--reuse: {venv} has no {venv_python(venv).relative_to(venv)}; remove the folder "
                                 "or name another with --venv.")
            return f"reused {venv}"
        if venv.resolve() == Path(sys.prefix).resolve() or not (venv / MARKER).is_file():
            raise ValueError(f"{venv} exists and was not made by this check: pass --reuse to use it as it is, "
                             "--no-install to run in it without installing, or name another folder with --venv.")
        shutil.rmtree(venv)
    if not isolated:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise ValueError(f"the environment running the check ({sys.prefix}) has no torch to layer the scratch venv "
                             "over: run it from the project's environment, or pass --isolated to install everything.")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if not isolated:
        site = subprocess.run([str(venv_python(venv)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        Path(site, LAYER_PTH).write_text("\n".join(base_site_packages()) + "\n")
    (venv / MARKER).write_text(json.dumps({"made_by": "python -m coz_train.compat", "made": time.strftime("%F %T"),
                                           "layered_over": None if isolated else sys.prefix}, indent=1) + "\n")
    return f"created {venv}" + ("" if isolated else f", layered over {sys.prefix}")


def layered_over(venv: Path) -> str | None:
    """The environment a scratch venv is layered over, if the check made it so."""
    try:
        return json.loads((venv / MARKER).read_text()).get("layered_over")
    except (OSError, ValueError):
        return None


def install_commands(venv: Path, checkout: Path, requirements: Path, constraints: Path) -> list[list[str]]:
    """The checkout's requirements (with the checked libraries' lines replaced, as pip would refuse a release
    outside the package's own bound), then the checkout itself, editable, without its dependencies."""
    pip = [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check"]
    return [[*pip, "-c", str(constraints), "-r", str(requirements)], [*pip, "--no-deps", "-e", str(checkout)]]


def installed_versions(python: Path, names: tuple[str, ...]) -> dict[str, str | None]:
    """{name: version installed for `python`, None where it is missing} (asked of that interpreter)."""
    code = ("import importlib.metadata as m, json, sys\n"
            "def v(n):\n"
            "    try:\n        return m.version(n)\n"
            "    except m.PackageNotFoundError:\n        return None\n"
            "print(json.dumps({n: v(n) for n in sys.argv[1:]}))")
    done = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"{python} could not report its installed versions: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)
