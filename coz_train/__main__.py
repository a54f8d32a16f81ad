"""`python -m coz_train +experiment=<name> [key=value ...]`: train the CoZ prompt VLM with GRPO."""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

from coz_train.cli import hydra_errors, run_hydra
from coz_train.config import config_dir, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> None:
    with hydra_errors():
        from coz_train.preflight import preflight

        checked = preflight(cfg)  # counts, versions and every model, before torch and the model libraries load
        from coz_train.train import train

        train(cfg, checked)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_hydra(main)
