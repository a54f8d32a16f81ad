"""The paired test, the Holm correction and the star levels on hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from coz_train.stats.significance import holm, signed_rank, stars


def test_holm_on_a_hand_worked_example() -> None:
    # sorted 0.01, 0.02, 0.04 -> 3*0.01, max(0.03, 2*0.02), max(0.04, 1*0.04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1, never below an earlier one
    adjusted = holm([math.nan, 0.01])
    assert math.isnan(adjusted[0]) and adjusted[1] == pytest.approx(0.01)  # an untested pair is no test


def test_star_levels() -> None:
    assert [stars(p) for p in (0.0004, 0.001, 0.009, 0.049, 0.05, 0.7, math.nan)] == \
        ["***", "**", "**", "*", "ns", "ns", "n/a"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_signed_rank_matches_scipy_exact_without_ties(seed: int) -> None:
    d = np.random.default_rng(seed).normal(0.4, 1, 11)
    ours = signed_rank(d)
    theirs = stats.wilcoxon(d, method="exact")
    assert ours == pytest.approx((theirs.statistic, theirs.pvalue))


def test_signed_rank_with_ties_and_zeros_matches_scipy_enumeration() -> None:
    d = np.array([0.5, 0.5, 1.0, -0.5, 0.0, 1.5, 1.0, 0.5, 0.0])  # ties and zeros: scipy enumerates too
    ours = signed_rank(d)
    theirs = stats.wilcoxon(d)
    assert ours == pytest.approx((theirs.statistic, theirs.pvalue))


def test_signed_rank_edge_cases() -> None:
    assert all(math.isnan(v) for v in signed_rank(np.array([0.7])))  # a single rater: not tested
    assert signed_rank(np.zeros(5)) == (0.0, 1.0)                     # nobody saw a difference
    big = np.random.default_rng(3).normal(0.5, 1, 40)                 # above the exact limit: asymptotic
    assert signed_rank(big)[1] == pytest.approx(stats.wilcoxon(big, method="asymptotic").pvalue)
