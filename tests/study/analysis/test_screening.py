"""Screening catches planted careless raters, each by its own rule, and leaves the honest ones alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from coz_train.study.analysis import ScreeningRules, analyze
from coz_train.study.analysis.screening import screen
from coz_train.study.analysis.simulate import ScoreModel, simulate_mos, simulate_pairs
from coz_train.study.ratings import Rating

IMAGE = ScoreModel({"Single": 2.96, "Multiple": 3.56, "GRPO": 3.86})
TEXT = ScoreModel({"Single": 2.30, "Multiple": 2.70, "GRPO": 4.24})
CARELESS = {"careless-random": "random", "careless-control": "control", "careless-repeat": "repeat",
            "careless-fast": "fast"}
RULE = {"random": "agreement", "control": "control", "repeat": "repeat", "fast": "fast"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_careless_raters_are_caught_and_honest_ones_are_not(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ratings = simulate_mos(IMAGE, 24, 15, rng, careless=CARELESS, n_repeats=3, n_controls=2)
    text = simulate_mos(TEXT, 24, 15, rng, test="text", careless=CARELESS, n_repeats=3, n_controls=2)
    # the same rater ids in both tests, so each rater's checks and agreement are judged over both
    checks = {c.rater: c for c in screen(ratings + text)}
    flagged = {r for r, c in checks.items() if c.flagged}
    assert flagged == set(CARELESS), {r: checks[r].reason for r in flagged ^ set(CARELESS)}
    for rater, kind in CARELESS.items():
        assert any(reason.startswith(RULE[kind] + ":") for reason in checks[rater].reasons), checks[rater].reasons
    honest = [c for r, c in checks.items() if r not in CARELESS]
    assert min(c.correlation for c in honest) > 0.25 > checks["careless-random"].correlation


def test_dropping_flagged_raters_and_both_analyses_reported() -> None:
    ratings = simulate_mos(IMAGE, 20, 12, np.random.default_rng(7), careless={"bad": "random"})
    dropped = analyze(ratings, conditions=list(IMAGE.means), n_boot=50)
    kept = analyze(ratings, conditions=list(IMAGE.means), n_boot=50, drop_flagged=False)
    assert [f.rater for f in dropped.flags] == ["bad"]
    assert dropped.tests["image"].n_raters == 19 and kept.tests["image"].n_raters == 20
    assert dropped.alternative["image"].n_raters == 20 and kept.alternative["image"].n_raters == 19
    assert dropped.screened is not dropped.all_raters


def test_nobody_flagged_gives_one_analysis() -> None:
    ratings = simulate_mos(IMAGE, 10, 8, np.random.default_rng(8))
    results = analyze(ratings, n_boot=20)
    assert results.flags == [] and results.screened is results.all_raters


def test_straight_liner_and_thresholds() -> None:
    ratings = simulate_mos(IMAGE, 12, 8, np.random.default_rng(9))
    straight = [replace(r, rater="same", task="same-" + r.task, score=3, check="", repeat_of="")
                for r in ratings if r.rater == "r00" and not r.check]
    checks = {c.rater: c for c in screen(ratings + straight)}
    assert checks["same"].reasons and checks["same"].reasons[0].startswith("agreement: the same answer")
    # a strict correlation limit flags everyone: the rule reads its threshold
    strict = screen(ratings, ScreeningRules(min_correlation=0.99, min_overlap=6))
    assert all(c.flagged for c in strict)


def test_time_zero_means_not_recorded() -> None:
    ratings = [replace(r, seconds=0.0) for r in simulate_mos(IMAGE, 8, 6, np.random.default_rng(10))]
    assert all(c.median_seconds is None and not c.flagged for c in screen(ratings))


def _pair(rater: str, task: str, left: str, right: str, choice: str, **kw: object) -> Rating:
    return Rating(rater=rater, task=task, test="image", kind="pair", item="0001@16x", scale=16,
                  condition_left=left, condition_right=right, choice=choice, seconds=3.0, **kw)


def test_pairwise_repeats_and_controls() -> None:
    ratings = simulate_pairs({"A": -0.5, "B": 0.0, "C": 0.6}, 10, 6, np.random.default_rng(11))
    # r00 answers its repeats for the other condition (sides swapped, so "left" again means a flip);
    # r01 picks the degraded control; r02 picks it only when unsure-free and is consistent on repeats
    ratings += [
        _pair("r00", "r00-first-1", "A", "B", "left"), _pair("r00", "r00-again-1", "B", "A", "left",
                                                               check="repeat", repeat_of="r00-first-1"),
        _pair("r00", "r00-first-2", "B", "C", "right"), _pair("r00", "r00-again-2", "B", "C", "left",
                                                                check="repeat", repeat_of="r00-first-2"),
        _pair("r01", "r01-control-1", "C", "nearest", "right", check="control", condition="nearest"),
        _pair("r01", "r01-control-2", "nearest", "B", "left", check="control", condition="nearest"),
        _pair("r02", "r02-first-1", "A", "C", "right"), _pair("r02", "r02-again-1", "C", "A", "left",
                                                                check="repeat", repeat_of="r02-first-1"),
        _pair("r02", "r02-control-1", "C", "nearest", "left", check="control", condition="nearest"),
    ]
    checks = {c.rater: c for c in screen(ratings)}
    assert checks["r00"].repeat_flips == 1.0 and checks["r00"].reasons[0].startswith("repeat:")
    assert checks["r01"].control_chosen == 1.0 and checks["r01"].reasons[0].startswith("control:")
    assert checks["r02"].repeat_flips == 0.0 and checks["r02"].control_chosen == 0.0 and not checks["r02"].flagged
