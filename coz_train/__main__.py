"""`python -m coz_train +experiment=<name> [key=value ...]`: train the CoZ prompt VLM with GRPO."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from coz_train.config import config_dir, register_configs

register_configs()
PACKAGE = Path(__file__).resolve().parent
record = logging.getLogger("coz_train.record")  # the run's log file only (conf/config.yaml)


def raised_by_coz_train(err: BaseException) -> bool:
    """An error this package raised itself (a checked setting, a missing file, a failed reward): its message
    carries the advice, so the traceback would only hide it. Errors raised inside libraries keep theirs."""
    tb = err.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE)


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
