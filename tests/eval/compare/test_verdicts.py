"""Verdicts on hand-written scores: a shift in every seed holds, a sign flip or a spread larger than the shift does
not, one run per side is a single-seed verdict, the metric's direction decides the winner, Holm spans the table."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from compare_helpers import group, scored_run

from coz_train.eval.compare.pairs import Pair, Side
from coz_train.eval.compare.report import verdict_line
from coz_train.eval.compare.verdicts import compare_all
from coz_train.stats.significance import holm

N = 40
BASE = np.random.default_rng(0).normal(50, 4, N)  # per-image MUSIQ of b: images differ a lot


def seeds(shifts: list[float], sd: float = 0.2, metric: str = "musiq") -> list:
    """One run per seed, a = b + shift + per-image noise (independent per seed)."""
    rng = np.random.default_rng(1)
    return [scored_run(f"s{k}", {"b": BASE + rng.normal(0, sd, N), "a": BASE + shift + rng.normal(0, sd, N)},
                       metric=metric) for k, shift in enumerate(shifts, start=1)]


def within(runs: list, metric: str = "musiq", scale: int = 64) -> list:
    g = group("g", *runs)
    [c] = compare_all([Pair(Side(g, "a"), Side(g, "b"), metric, scale)], [f"{i:04d}" for i in range(N)], 500, 0, 0.05)
    return [c, g]


def test_a_shift_in_every_seed_holds() -> None:
    c, g = within(seeds([0.4, 0.35, 0.45]))
    assert c.verdict == "holds" and c.better == "a" and c.seeds_holding == 3 and c.n == N
    assert c.mean_diff == pytest.approx(0.4, abs=0.05) and c.ci_low > 0
    assert abs(c.mean_diff) > c.seed_spread
    line = verdict_line(c, [g])
    assert re.fullmatch(r"a beats b on MUSIQ at 64x \(higher is better\): \+0\.\d+ \[\+0\.\d+, \+0\.\d+\], "
                        r"p \(Holm\) <0\.001, n = 40, holds in 3 of 3 seeds \(between-seed spread 0\.\d+\)", line), line


def test_a_sign_flip_between_seeds_is_not_a_verdict() -> None:
    c, _ = within(seeds([0.9, -1.1]))  # the public ablation that flipped sign between two seeds
    assert c.verdict in ("no difference", "seed-dependent") and c.seeds_holding <= 1


def test_a_shift_within_the_between_seed_spread_is_seed_dependent() -> None:
    c, g = within(seeds([0.1, 0.3, 3.0], sd=0.05))  # every seed significant, but one seed makes the mean
    assert all(r.holds for r in c.replicates)
    assert c.p_holm < 0.05 and abs(c.mean_diff) < c.seed_spread
    assert c.verdict == "seed-dependent"
    assert "holds in 3 of 3 seeds but within the between-seed spread" in verdict_line(c, [g])


def test_one_run_per_side_is_a_single_seed_verdict() -> None:
    c, g = within(seeds([0.4]))
    assert c.verdict == "single-seed" and len(c.replicates) == 1 and math.isnan(c.seed_spread)
    assert "single-seed verdict" in verdict_line(c, [g])


def test_the_metric_direction_decides_the_winner() -> None:
    c, g = within(seeds([-1.0], metric="niqe"), metric="niqe")  # a's NIQE is lower: a is better
    assert c.better == "a" and not c.higher_is_better
    assert verdict_line(c, [g]).startswith("a beats b on NIQE at 64x (lower is better): -")
    c, g = within(seeds([+1.0], metric="niqe"), metric="niqe")
    assert c.better == "b" and verdict_line(c, [g]).startswith("b beats a on NIQE at 64x (lower is better): -")


def test_no_shift_is_never_a_verdict_and_undefined_scores_are_left_out() -> None:
    runs = seeds([0.0, 0.0, 0.0])
    runs[0].scores[("a", 64, "musiq")]["0003"] = math.nan  # one undefined score: that image leaves the comparison
    c, _ = within(runs)
    assert c.n == N - 1 and c.seeds_holding == 0
    # this draw leans one way in all three seeds (pooled p 0.03, a 1-in-20 chance without a shift), yet no seed
    # holds on its own: the pooled test alone would have called it
    assert c.p_holm < 0.05 and c.verdict == "seed-dependent"
    same = within(seeds([0.0], sd=0.0))[0]  # identical scores
    assert same.verdict == "no difference" and same.better == "" and same.p == 1.0


def test_across_groups_every_run_of_a_side_with_several_is_a_replicate() -> None:
    rng = np.random.default_rng(2)
    mine = [scored_run(f"m{k}", {"x-vlm+adapter": BASE + 0.5 + rng.normal(0, 0.2, N)}) for k in range(3)]
    released = [scored_run("released", {"x-vlm+adapter": BASE + rng.normal(0, 0.2, N)})]
    a, b = group("mine", *mine), group("released", *released)
    [c] = compare_all([Pair(Side(a, "x-vlm+adapter"), Side(b, "x-vlm+adapter"), "musiq", 64)],
                      [f"{i:04d}" for i in range(N)], 500, 0, 0.05)
    assert [r.label for r in c.replicates] == ["mine seed 1", "mine seed 2", "mine seed 3"]
    assert c.verdict == "holds" and c.better == "a"
    assert verdict_line(c, [a, b]).startswith("mine beats released with x-vlm+adapter on MUSIQ at 64x")
    both = group("released", *released, scored_run("r2", {"x-vlm+adapter": BASE + rng.normal(0, 0.2, N)}))
    [c2] = compare_all([Pair(Side(a, "x-vlm+adapter"), Side(both, "x-vlm+adapter"), "musiq", 64)],
                       [f"{i:04d}" for i in range(N)], 200, 0, 0.05)
    assert len(c2.replicates) == 5  # 3 runs against the other side's mean, and 2 the other way


def test_holm_spans_every_comparison_and_the_same_runs_give_the_same_numbers() -> None:
    runs = seeds([0.4])
    g = group("g", *runs)
    images = [f"{i:04d}" for i in range(N)]
    for run in runs:  # a second scale where nothing differs
        run.scores[("a", 256, "musiq")] = dict(run.scores[("b", 64, "musiq")])
        run.scores[("b", 256, "musiq")] = dict(run.scores[("b", 64, "musiq")])
    pairs = [Pair(Side(g, "a"), Side(g, "b"), "musiq", s) for s in (64, 256)]
    table = compare_all(pairs, images, 300, 0, 0.05)
    assert [c.p_holm for c in table] == pytest.approx(holm([c.p for c in table]))
    alone = compare_all(pairs[:1], images, 300, 0, 0.05)[0]
    assert (alone.ci_low, alone.ci_high) == (table[0].ci_low, table[0].ci_high)  # seeded per pair


def test_a_metric_of_unknown_direction_is_a_clear_error() -> None:
    c_runs = seeds([0.4], metric="sharpness")
    with pytest.raises(ValueError, match=r"s1 has scores of 'sharpness'.*direction.*--metrics"):
        within(c_runs, metric="sharpness")
