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


class CriticScoringError(RuntimeError):
    """The critic produced no usable scores for a batch (all unparsable, NaN, or logits that ignore the input).

    Raised, never turned into missing scores: `reward_failure` then retries and stops (or skips the
    step), instead of a run that quietly trains on the other rewards alone.
    """


BROKEN_LOAD_HINT = (
    "check that the critic loaded correctly: critic.name_or_path, critic.dtype (float16 can overflow), and for an "
    "InternVL2.5 checkpoint under transformers 5 convert it (python -m coz_train.critic_convert) and use "
    "critic.backend=hf"
)


def check_score_logits(logits: torch.Tensor, name: str) -> None:
    """Refuse next-token logits over the score tokens, [N, score_max + 1], that are non-finite or flat in every row.

    Flat rows (all score tokens exactly equal) are what zero or uninitialised weights and buffers give;
    a loaded model never has them for every candidate.
    """
    if not torch.isfinite(logits).all():
        bad = int((~torch.isfinite(logits)).any(dim=-1).sum())
        raise CriticScoringError(f"Critic {name}: non-finite logits for {bad} of {logits.shape[0]} candidates; "
                                 f"{BROKEN_LOAD_HINT}.")
    if logits.shape[-1] > 1 and bool((logits.amax(dim=-1) == logits.amin(dim=-1)).all()):
        raise CriticScoringError(f"Critic {name}: the logits of the score tokens are constant for all "
                                 f"{logits.shape[0]} candidates (the critic ignores its input); {BROKEN_LOAD_HINT}.")
