"""Phrase-exclusion reward: 1.0 when the prompt avoids every viewpoint phrase, else 0.0.

The paper penalises prompts that talk about the image pair ("first image", "second image")
instead of its content, since such words mean nothing to the SR backbone. Matching is
case-insensitive on whitespace-normalised text, and a phrase must start and end on a word
boundary ("the image" does not fire on "the imagery").
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from coz_train.rewards.text import completion_text

# The paper's two published examples plus the viewpoint phrases a VLM writes about a zoom pair.
DEFAULT_PHRASES: tuple[str, ...] = (
    "first image", "second image", "the image", "this image", "the picture", "original image",
    "left image", "right image", "zoom-in", "zoomed-in", "zoom in", "zoomed in", "zoomed",
    "magnified", "cropped", "close-up of",
)


@lru_cache(maxsize=32)
def _pattern(phrases: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = [r"\s+".join(re.escape(word) for word in p.lower().split()) for p in phrases if p.strip()]
    if not alternatives:
        return re.compile(r"(?!x)x")  # matches nothing
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)")


def phrase_exclusion_reward(
    prompts: list[Any] | None = None,
    completions: list[Any] | None = None,
    phrases: list[str] | tuple[str, ...] = DEFAULT_PHRASES,
    **kwargs: Any,
) -> list[float]:
    """TRL reward function: 1.0 for each completion that contains none of `phrases`, else 0.0."""
    pattern = _pattern(tuple(phrases))
    return [0.0 if pattern.search(completion_text(c).lower()) else 1.0 for c in completions or []]
