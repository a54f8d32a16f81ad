"""The device a model of this process runs on, from a config's `device` (`eval.device`, `data.device`)."""

from __future__ import annotations

import os

import torch


def rank_device(name: str) -> torch.device:
    """`auto`: this rank's GPU (LOCAL_RANK) when there is one, else the CPU; otherwise the device named."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    return torch.device(name)
