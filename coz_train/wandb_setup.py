"""wandb for a run: project and run names from the experiment, offline when there are no credentials."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc(os.environ.get("NETRC", Path.home() / ".netrc"))
        return any(auth.authenticators(host) for host in ("api.wandb.ai",))
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def configure_wandb(cfg: DictConfig) -> list[str]:
    """Set wandb's environment for this run; return TRL's `report_to` list."""
    logging_cfg = cfg.logging
    if not logging_cfg.wandb or logging_cfg.mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
        return ["none"]
    mode = logging_cfg.mode
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if _has_credentials() else "offline")
    if mode not in ("online", "offline"):
        raise ValueError(f"logging.mode='{logging_cfg.mode}' must be auto, online, offline or disabled.")
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_PROJECT", logging_cfg.project)
    os.environ["WANDB_DIR"] = str(Path(cfg.output_dir).resolve())
    os.environ.setdefault("WANDB_SILENT", "true")
    log.info("wandb: %s run in project '%s'", mode, os.environ["WANDB_PROJECT"])
    return ["wandb"]
