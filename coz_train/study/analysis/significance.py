"""Paired comparisons between two conditions of a study: what is compared, and the Holm-corrected family.

The unit of the test is the rater. Each rater contributes one paired difference between the two
conditions (the mean, over the items that rater judged under both, of second minus first), and the
Wilcoxon signed-rank test (`coz_train.stats.significance`) asks whether those differences are centred
on zero. Ratings of one rater are not independent of each other (a strict rater is strict everywhere),
so a test over all rater x item cells would count one rater's habits as many observations and give
p-values that are far too small; per-rater differences are free of each rater's bias and of the item
effects (both conditions are compared on the same items). The p-value speaks for new raters on these
items; the two-way bootstrap interval of the difference, reported beside it, speaks for new raters and
new items. Across the pairs reported for one test, p-values are Holm-corrected and the stars are set
from the corrected p-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from coz_train.stats.significance import NOT_TESTED, holm, stars


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


def with_holm(comparisons: list[Comparison]) -> list[Comparison]:
    adjusted = holm([c.p for c in comparisons])
    return [replace(c, p_holm=q, stars=stars(q)) for c, q in zip(comparisons, adjusted, strict=True)]


def neighbours(comparisons: list[Comparison], order: list[str]) -> list[Comparison]:
    """The comparisons between conditions next to each other in `order` (the figure's stars)."""
    adjacent = set(zip(order, order[1:], strict=False))
    return [c for c in comparisons if (c.first, c.second) in adjacent]
