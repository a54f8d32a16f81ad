"""Package discovery; the project's metadata lives in pyproject.toml.

Every package under coz_train/ is found automatically, and the Hydra configs at the top of the
checkout (conf/, one folder per config group) ship inside the package as coz_train.conf; the study's
web pages (coz_train/study/templates, static) ship as package data.
"""

from setuptools import find_namespace_packages, find_packages, setup

config_groups = [f"coz_train.conf.{name}" for name in find_namespace_packages(where="conf")]
setup(
    packages=[*find_packages(include=["coz_train", "coz_train.*"]), "coz_train.conf", *config_groups],
    package_dir={"coz_train": "coz_train", "coz_train.conf": "conf"},
    package_data={"coz_train": ["grpo_fields.json"], "coz_train.conf": ["*.yaml"], **{group: ["*.yaml"] for group in config_groups},
                  "coz_train.study": ["templates/*.html", "static/*"]},
)
