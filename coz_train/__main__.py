"""`python -m coz_train +experiment=<name> [key=value ...]`: train the CoZ prompt VLM with GRPO."""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from coz_train.config import config_dir, register_configs
from coz_train.errors import raised_by_coz_train

register_configs()
record = logging.getLogger("coz_train.record")  # the run's log file only (conf/config.yaml)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> None:
    from coz_train.train import train

    try:
        train(cfg)
    except Exception as err:
        record.error("The run stopped: %s: %s", type(err).__name__, err, exc_info=True)
        if raised_by_coz_train(err) and not os.environ.get("HYDRA_FULL_ERROR"):
            sys.stderr.write(f"Error: {err}\n(HYDRA_FULL_ERROR=1 shows the traceback; the run's log has it too)\n")
            raise SystemExit(1) from None
        raise


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
