"""Repetition penalty: the fraction of repeated word n-grams, as a reward down to `max_penalty`.

R = (1 - unique n-grams / total n-grams) * |max_penalty| * -1 over lower-cased whitespace words,
so a prompt with no repeated n-gram scores 0.0 and one that repeats a single n-gram forever tends
to max_penalty (-1 by default). Texts with fewer than n words score 0.0. As ms-swift's
`repetition` reward, which the paper's released adapter points to.
"""

from __future__ import annotations

from typing import Any

from coz_train.rewards.text import completion_text


def repetition_penalty(text: str, n: int = 3, max_penalty: float = -1.0) -> float:
    if n < 1:
        raise ValueError(f"repetition n={n} must be >= 1")
    words = text.lower().split()
    if len(words) < n:
        return 0.0
    ngrams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    repeated = 1.0 - len(set(ngrams)) / len(ngrams)
    return -abs(max_penalty) * repeated + 0.0  # + 0.0 turns -0.0 into 0.0


def repetition_reward(
    prompts: list[Any] | None = None,
    completions: list[Any] | None = None,
    n: int = 3,
    max_penalty: float = -1.0,
    **kwargs: Any,
) -> list[float]:
    """TRL reward function: the repetition penalty of each completion (0.0 .. max_penalty)."""
    return [repetition_penalty(completion_text(c), n, max_penalty) for c in completions or []]
