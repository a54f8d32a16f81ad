"""Paired comparisons between two conditions: the test, the Holm correction and the star levels.

The unit of the test is the rater. Each rater contributes one paired difference between the two
conditions (the mean, over the items that rater judged under both, of second minus first), and the
Wilcoxon signed-rank test (scipy) asks whether those differences are centred on zero. Ratings of one
rater are not independent of each other (a strict rater is strict everywhere), so a test over all
rater x item cells would count one rater's habits as many observations and give p-values that are far
too small; per-rater differences are free of each rater's bias and of the item effects (both
conditions are compared on the same items). The p-value speaks for new raters on these items; the
two-way bootstrap interval of the difference, reported beside it, speaks for new raters and new items.
The signed-rank test makes no normality assumption about differences of 1-5 scores; its p-value is
exact for up to 16 raters (ties included) and scipy's normal approximation above; raters with a zero
difference are left out of the ranks (Wilcoxon's convention).

Across the pairs reported for one test, p-values are Holm-corrected (Holm 1979: step-down Bonferroni,
controls the family-wise error rate without assumptions about the dependence between pairs); the stars
are set from the corrected p-value: *** < 0.001, ** < 0.01, * < 0.05, else ns. Holm is a few lines, so
it is written here rather than adding a dependency (statsmodels) for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

STAR_LEVELS = ((0.001, "***"), (0.01, "**"), (0.05, "*"))
EXACT_MAX = 16  # exact signed-rank p-values up to this many non-zero differences (2^16 sign assignments)
NOT_TESTED = "n/a"


@dataclass(frozen=True)
class Comparison:
    """`second` against `first` (display order): estimate = statistic(second) - statistic(first)."""

    first: str
    second: str
    estimate: float       # MOS difference, or Bradley-Terry score difference for pairwise studies
    ci_low: float         # two-way bootstrap 95% interval of the estimate
    ci_high: float
    n_raters: int         # raters with a paired difference (zero differences included)
    statistic: float      # Wilcoxon signed-rank statistic
    p: float              # uncorrected p-value (NaN when fewer than two raters differ)
    p_holm: float = math.nan
    stars: str = NOT_TESTED


def stars(p: float) -> str:
    if not math.isfinite(p):
        return NOT_TESTED
    for level, mark in STAR_LEVELS:
        if p < level:
            return mark
    return "ns"


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values; NaN entries (untested pairs) stay NaN and do not count as tests."""
    tested = [(p, i) for i, p in enumerate(p_values) if math.isfinite(p)]
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    m = len(tested)
    for rank, (p, i) in enumerate(sorted(tested)):
        running = max(running, min(1.0, (m - rank) * p))  # step-down: never below an earlier adjusted value
        adjusted[i] = running
    return adjusted


def with_holm(comparisons: list[Comparison]) -> list[Comparison]:
    adjusted = holm([c.p for c in comparisons])
    return [replace(c, p_holm=q, stars=stars(q)) for c, q in zip(comparisons, adjusted, strict=True)]


def signed_rank(differences: np.ndarray) -> tuple[float, float]:
    """(statistic, p) of the two-sided Wilcoxon signed-rank test; the statistic is min(T+, T-).

    Fewer than two raters: not tested (NaN, NaN). Every difference zero: no evidence of a difference, p = 1.
    Zeros are dropped (Wilcoxon's convention). Up to EXACT_MAX non-zero differences the p-value is exact:
    every one of the 2^n sign assignments is enumerated, with tied differences given their average rank.
    scipy does the same enumeration for tied data up to n = 13, but through its general permutation test,
    seconds per call; per-rater mean differences are tied more often than not, and a study compares every
    pair of conditions twice, hence the vectorised enumeration here. Above EXACT_MAX: scipy's normal
    approximation with its tie correction.
    """
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return math.nan, math.nan
    d = d[d != 0]
    if len(d) == 0:
        return 0.0, 1.0
    n = len(d)
    if n > EXACT_MAX:
        result = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="asymptotic")
        return float(result.statistic), float(result.pvalue)
    ranks = stats.rankdata(np.abs(d))                      # [n], average ranks for ties
    t_plus = float(ranks[d > 0].sum())
    centre = ranks.sum() / 2
    signs = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1  # [2^n, n]: every sign assignment
    null = signs @ ranks                                    # [2^n] T+ under each assignment
    p = float(np.mean(np.abs(null - centre) >= abs(t_plus - centre) - 1e-9))
    return float(min(t_plus, 2 * centre - t_plus)), min(1.0, p)


def neighbours(comparisons: list[Comparison], order: list[str]) -> list[Comparison]:
    """The comparisons between conditions next to each other in `order` (the figure's stars)."""
    adjacent = set(zip(order, order[1:], strict=False))
    return [c for c in comparisons if (c.first, c.second) in adjacent]
