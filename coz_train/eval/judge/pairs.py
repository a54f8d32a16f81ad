"""What the judge is shown for each result: the wider view and the zoomed output, one pair per method and scale.

The wider view of state k (k = 1..N) is the state it was zoomed from:
- `onestep`, `nearest`, `bicubic`: the start (state 0), since state k is made from the start's centre
  1/scale^k crop in one go and states 1..k-1 are no part of it;
- every other method (`recursive`, `recursive_multiscale`: the CoZ chains): state k-1, whose centre 1/scale the
  backbone enlarged into state k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from coz_train.sr.chain import RESAMPLE_METHODS, Chain

METRIC = "hallucination"  # the metric name in scores.json and results.csv (lower is better: eval/tables.py)
FROM_START = ("onestep", *RESAMPLE_METHODS)  # state k is made from the start; for the others, from state k-1


@dataclass(frozen=True)
class JudgePair:
    """One question to the judge: is `zoomed` (state k of `method`) hallucinating, given `wider`?"""

    method: str  # the result name: `bicubic`, `recursive_multiscale-vlm`, ...
    scale: int  # the zoom of state k: scale**k
    wider: Image.Image
    zoomed: Image.Image


def base_method(label: str) -> str:
    """`recursive_multiscale-vlm+adapter` -> `recursive_multiscale` (eval.methods' name of a result)."""
    return label.partition("-")[0]


def wider_index(label: str, k: int) -> int:
    """The state the judge sees as the wider view of state k (see the module docstring)."""
    return 0 if base_method(label) in FROM_START else k - 1


def judge_pairs(chains: list[Chain], scales: list[int]) -> list[JudgePair]:
    """Every (method, scale) pair of one image's chains, in the order of `chains`, then of `scales` (a chain with
    fewer steps than `scales`, e.g. `full` with its own step count, up to its last state)."""
    pairs = []
    for chain in chains:
        if len(chain.states) < 2:
            raise ValueError(
                f"{chain.method}: {len(chain.states)} state(s); the judge needs the start and at least one "
                "zoomed state."
            )
        for k, scale in enumerate(scales[: len(chain.states) - 1], start=1):
            pairs.append(JudgePair(chain.method, scale, chain.states[wider_index(chain.method, k)], chain.states[k]))
    return pairs


def as_scores(pairs: list[JudgePair], values: list[float | None]) -> list[tuple[str, int, str, float]]:
    """(method, scale, "hallucination", value) per pair; an unparsable answer (None) is NaN, which the tables leave
    out of the mean and its n (an abstention, not a 0)."""
    return [
        (p.method, p.scale, METRIC, math.nan if v is None else float(v)) for p, v in zip(pairs, values, strict=True)
    ]
