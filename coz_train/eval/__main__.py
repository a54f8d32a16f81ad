"""`python -m coz_train.eval +experiment=<name> [key=value ...]`: evaluate CoZ prompts on SR quality."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from coz_train.cli import hydra_errors, run_hydra
from coz_train.config import config_dir, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> None:
    with hydra_errors():
        from coz_train.eval.run import evaluate

        evaluate(cfg)


if __name__ == "__main__":
    run_hydra(main, job="eval")  # the run folder's log is eval.log, not train.log
