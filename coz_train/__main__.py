"""`python -m coz_train +experiment=<name> [key=value ...]`: train the CoZ prompt VLM with GRPO."""

from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig

from coz_train.config import config_dir, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> None:
    from coz_train.train import train

    try:
        train(cfg)
    except Exception as err:
        # into train.log as well as the console: the traceback alone reaches only stderr
        logging.getLogger("coz_train").error("The run stopped: %s: %s", type(err).__name__, err)
        raise


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
