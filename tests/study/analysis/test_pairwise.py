"""Bradley-Terry in a study: recovers a known strength ordering; ties are half a win."""

from __future__ import annotations

import numpy as np
import pytest

from coz_train.study.analysis import analyze
from coz_train.study.analysis.simulate import simulate_pairs
from coz_train.study.ratings import Rating

STRENGTHS = {"nearest": -1.2, "Single": -0.2, "Multiple": 0.3, "GRPO": 1.1}  # centred: sum 0


def test_known_strengths_and_ordering_are_recovered() -> None:
    ratings = simulate_pairs(STRENGTHS, n_raters=20, n_items=12, rng=np.random.default_rng(0), item_sd=0.0)
    results = analyze(ratings, conditions=list(STRENGTHS), n_boot=300)
    bt = results.tests["image"].bradley_terry
    assert bt is not None and bt.conditions == list(STRENGTHS)
    assert bt.scores == sorted(bt.scores)
    assert sum(bt.scores) == pytest.approx(0, abs=1e-9)
    for c, s, lo, hi in zip(bt.conditions, bt.scores, bt.ci_low, bt.ci_high, strict=True):
        assert s == pytest.approx(STRENGTHS[c], abs=0.2)
        assert lo < STRENGTHS[c] < hi
    assert bt.n == 20 * 12 * 6 and bt.n_comparisons[0][3] == 20 * 12
    comparisons = {(c.first, c.second): c for c in results.tests["image"].pair_comparisons}
    assert comparisons[("nearest", "Single")].stars == "***"
    assert comparisons[("Single", "GRPO")].estimate == pytest.approx(bt.scores[3] - bt.scores[1])


def test_intervals_are_not_too_narrow() -> None:
    """Over 100 simulated pairwise studies the 95% intervals cover the true strengths at least nominally."""
    truth = {"Single": -0.5, "Multiple": 0.1, "GRPO": 0.4}
    covered = []
    for sim in range(100):
        ratings = simulate_pairs(truth, n_raters=10, n_items=8, rng=np.random.default_rng(sim), item_sd=0.0)
        results = analyze(ratings, conditions=list(truth), n_boot=100, drop_flagged=False, seed=sim)
        bt = results.tests["image"].bradley_terry
        covered += [lo <= truth[c] <= hi for c, lo, hi in zip(bt.conditions, bt.ci_low, bt.ci_high, strict=True)]
    assert np.mean(covered) >= 0.93


def test_ordering_survives_unsure_answers_and_item_effects() -> None:
    ratings = simulate_pairs(STRENGTHS, n_raters=15, n_items=10, rng=np.random.default_rng(1), unsure=0.25)
    bt = analyze(ratings, conditions=list(STRENGTHS), n_boot=100).tests["image"].bradley_terry
    assert bt.scores == sorted(bt.scores)
    assert bt.n_unsure > 0.15 * bt.n
    # ties pull the scores together: less spread than the truth
    assert bt.scores[-1] - bt.scores[0] < STRENGTHS["GRPO"] - STRENGTHS["nearest"]


def _pair(k: int, left: str, right: str, choice: str) -> Rating:
    return Rating(rater=f"r{k % 3}", task=f"t{k}", test="text", kind="pair", item=f"i{k % 4}", scale=4,
                  condition_left=left, condition_right=right, choice=choice)


def test_unsure_is_half_a_win_and_the_win_rate_matrix() -> None:
    # a beats b 3 times, b beats a once, 2 unsure: a's win rate is (3 + 1) / 6 whatever the sides
    ratings = [_pair(0, "a", "b", "left"), _pair(1, "b", "a", "right"), _pair(2, "a", "b", "left"),
               _pair(3, "b", "a", "left"), _pair(4, "a", "b", "unsure"), _pair(5, "b", "a", "unsure")]
    bt = analyze(ratings, conditions=["a", "b"], n_boot=20).tests["text"].bradley_terry
    assert bt.win_rate[0][1] == pytest.approx(4 / 6) and bt.win_rate[1][0] == pytest.approx(2 / 6)
    assert bt.n_comparisons == [[0, 6], [6, 0]] and bt.n_unsure == 2
    # the two-condition fit is the log-odds of the win rate, split around zero (up to the tiny ridge)
    assert bt.scores[0] - bt.scores[1] == pytest.approx(np.log(4 / 2), abs=1e-2)
    only_unsure = [_pair(k, "a", "b", "unsure") for k in range(4)]
    assert analyze(only_unsure, n_boot=5).tests["text"].bradley_terry.scores == pytest.approx([0, 0], abs=1e-9)
