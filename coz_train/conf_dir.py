"""Where the Hydra configs are. Its own module, free of the training schema (which imports TRL), so
commands that only compose a config of their own (`python -m coz_train.study`) start in a second."""

from __future__ import annotations

from pathlib import Path

CONF_DIR_NAME = "conf"


def config_dir() -> str:
    """The `conf/` folder: shipped inside the installed package, or at the top of a checkout."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / CONF_DIR_NAME, package_dir.parent / CONF_DIR_NAME):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"coz_train's configs were not found in {package_dir / CONF_DIR_NAME} or "
        f"{package_dir.parent / CONF_DIR_NAME}: reinstall the package (pip install -e .)."
    )
