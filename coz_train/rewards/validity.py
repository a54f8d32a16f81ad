"""Validity reward (`rewards.validity`): 1.0 for a prompt a text-conditioned SR backbone can read, else 0.0.

A GRPO run can find that near-empty or non-English output scores well with a lenient critic (a public
GRPO-on-CoZ run collapsed that way: completion length 45 -> 3 tokens). This reward pays only for completions
that are words in Latin script; off by default (not in conf/rewards/coz.yaml):

    python -m coz_train +experiment=grpo_qwen data.image_dir=/data/LSDIR +rewards.validity.weight=0.5

A completion scores 1.0 when both hold, else 0.0 (so the reward is in {0, 1}):
- it holds at least `min_content_words` distinct content words: runs of letters (any script; digits,
  punctuation and `_` split words, so "close-up" is two) of two letters or more, lower-cased, that are not
  English function words (`FUNCTION_WORDS`: articles, pronouns, prepositions, conjunctions, auxiliaries);
- at least `min_latin_share` of its letters are Latin (`latin_share`: a letter is Latin when its Unicode
  name starts with "LATIN", so accented letters count; a completion without any letter fails). This is a
  script check, not a language check: Vietnamese or German pass, Chinese or Cyrillic text does not.

`latin_share` and `empty_or_non_latin` are also what the `empty_or_non_latin` tripwire counts
(coz_train/tripwires.py), so the reward and the wire agree on what a non-Latin completion is.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any

from omegaconf import DictConfig

from coz_train.rewards.registry import named, register
from coz_train.rewards.text import completion_text

DEFAULT_MIN_CONTENT_WORDS = 2  # "fur, whiskers": the shortest useful "set of words"
DEFAULT_MIN_LATIN_SHARE = 0.5

# English words that carry no content of their own in a "set of words" prompt.
FUNCTION_WORDS = frozenset(
    "a an the and or but nor so yet of in on at to for with from by as into onto over under above below "
    "between through about against among off up down out than then is are was were be been being am do does "
    "did has have had it its this that these those there here he she they we you me him her them us my your "
    "his our their which who whom what where when how not no yes some any all each every very too also just "
    "can could will would shall should may might must".split()
)

_WORD = re.compile(r"[^\W\d_]+")  # a run of letters (\w minus digits and underscore)


@lru_cache(maxsize=4096)
def _is_latin(letter: str) -> bool:
    return unicodedata.name(letter, "").startswith("LATIN")


def latin_share(text: str) -> float | None:
    """The share of the text's letters that are Latin, or None when it has no letter (empty, digits, symbols)."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return None
    return sum(_is_latin(ch) for ch in letters) / len(letters)


def empty_or_non_latin(text: str, min_latin_share: float = DEFAULT_MIN_LATIN_SHARE) -> bool:
    """True for a completion without any letter, or whose letters are less than `min_latin_share` Latin."""
    share = latin_share(text)
    return share is None or share < min_latin_share


def content_words(text: str) -> set[str]:
    """The distinct lower-cased words of two letters or more that are not function words."""
    return {w for w in (m.lower() for m in _WORD.findall(text)) if len(w) >= 2 and w not in FUNCTION_WORDS}


def is_valid(
    text: str, min_content_words: int = DEFAULT_MIN_CONTENT_WORDS, min_latin_share: float = DEFAULT_MIN_LATIN_SHARE
) -> bool:
    return not empty_or_non_latin(text, min_latin_share) and len(content_words(text)) >= min_content_words


def validity_reward(
    prompts: list[Any] | None = None,
    completions: list[Any] | None = None,
    min_content_words: int = DEFAULT_MIN_CONTENT_WORDS,
    min_latin_share: float = DEFAULT_MIN_LATIN_SHARE,
    **kwargs: Any,
) -> list[float]:
    """TRL reward function: 1.0 for each completion with enough content words in mostly Latin letters, else 0.0."""
    return [1.0 if is_valid(completion_text(c), min_content_words, min_latin_share) else 0.0 for c in completions or []]


def check_validity(params: dict[str, Any], cfg: DictConfig | None = None) -> None:
    """Refuse parameters that would make the reward constant or meaningless, at start-up."""
    words = params.get("min_content_words", DEFAULT_MIN_CONTENT_WORDS)
    if isinstance(words, bool) or not isinstance(words, int) or words < 1:
        raise ValueError(
            f"rewards.validity.min_content_words={words!r} must be a whole number >= 1 "
            "(the distinct content words a completion needs; 2 by default)."
        )
    share = params.get("min_latin_share", DEFAULT_MIN_LATIN_SHARE)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise ValueError(
            f"rewards.validity.min_latin_share={share!r} must be a number in [0, 1] "
            "(the share of a completion's letters that must be Latin; 0 turns the script check off)."
        )


@register("validity", params=("min_content_words", "min_latin_share"), check=check_validity)
def build_validity_reward(params: dict[str, Any], cfg: DictConfig):
    return named(
        validity_reward,
        "validity",
        min_content_words=int(params.get("min_content_words", DEFAULT_MIN_CONTENT_WORDS)),
        min_latin_share=float(params.get("min_latin_share", DEFAULT_MIN_LATIN_SHARE)),
    )
