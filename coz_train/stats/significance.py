"""Paired tests: the Wilcoxon signed-rank test, the Holm correction and star levels.

The signed-rank test asks whether paired differences (one per unit: a rater in the human study, an
image in the eval comparison) are centred on zero. It makes no normality assumption; its p-value is
exact for up to EXACT_MAX non-zero differences (ties included) and scipy's normal approximation with
its tie correction above; units with a zero difference are left out of the ranks (Wilcoxon's
convention).

Across the comparisons of one family, p-values are Holm-corrected (Holm 1979: step-down Bonferroni,
controls the family-wise error rate without assumptions about the dependence between comparisons);
star levels are set from a (corrected) p-value: *** < 0.001, ** < 0.01, * < 0.05, else ns. Holm is a
few lines, so it is written here rather than adding a dependency (statsmodels) for it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

STAR_LEVELS = ((0.001, "***"), (0.01, "**"), (0.05, "*"))
EXACT_MAX = 16  # exact signed-rank p-values up to this many non-zero differences (2^16 sign assignments)
NOT_TESTED = "n/a"


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


def signed_rank(differences: np.ndarray) -> tuple[float, float]:
    """(statistic, p) of the two-sided Wilcoxon signed-rank test; the statistic is min(T+, T-).

    Fewer than two units: not tested (NaN, NaN). Every difference zero: no evidence of a difference, p = 1.
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
