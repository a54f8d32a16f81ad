"""Pieces shared by every critic backend: the instruction, score parsing, the device, freezing."""

from __future__ import annotations

import re
from typing import Any

import torch

_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)")


def parse_score(answer: str, score_max: int) -> float | None:
    """The first number in the answer, if it lies in [0, score_max]; else None (never a fake 0)."""
    match = _NUMBER.search(answer)
    if match is None:
        return None
    value = float(match.group(1))
    return value if 0.0 <= value <= score_max else None


def instruction_text(cfg: Any, text: str) -> str:
    """The critic's instruction for one candidate prompt (shared by every backend)."""
    return cfg.instruction.format(prompt=text, score_max=cfg.score_max)


def critic_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model
