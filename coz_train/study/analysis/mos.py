"""Mean opinion scores per condition, with two-way bootstrap intervals, and the paired tests between them.

The MOS of a condition is the mean of all its ordinary ratings (ITU-T P.910: the mean over raters and
items); its 95% interval is the percentile interval of the two-way (rater x item) bootstrap
(`coz_train.stats.bootstrap`), and the SD is the standard deviation of the individual ratings (ddof=1), the spread the
paper's +-1.1 error bars appear to show. Every pair of conditions is compared (significance.py): the
MOS difference with its bootstrap interval, computed on the same replicates as the MOS themselves, and
the Wilcoxon signed-rank p-value on per-rater differences, Holm-corrected across the pairs of the test.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from coz_train.stats.bootstrap import crossed_weights, percentile_interval
from coz_train.stats.significance import signed_rank
from coz_train.study.analysis.cells import MosCells
from coz_train.study.analysis.significance import Comparison, with_holm


@dataclass(frozen=True)
class ConditionMOS:
    condition: str
    mos: float
    sd: float          # of the individual ratings (ddof=1; NaN for a single rating)
    ci_low: float      # two-way bootstrap 95% interval of the MOS
    ci_high: float
    n_ratings: int
    n_raters: int
    n_items: int


def bootstrap_means(cells: MosCells, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, C] MOS per condition in each two-way replicate (NaN where a condition drew no rating)."""
    onehot = np.zeros((len(cells), len(cells.conditions)))  # [N, C]
    onehot[np.arange(len(cells)), cells.condition] = 1.0
    weighted = onehot * cells.score[:, None]                # [N, C]
    out = []
    for w in crossed_weights(cells.rater, cells.item, len(cells.raters), len(cells.items), n_boot, rng):  # [b, N]
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((w @ weighted) / (w @ onehot))
    return np.concatenate(out) if out else np.empty((0, len(cells.conditions)))


def per_rater_differences(grid: np.ndarray, first: int, second: int) -> np.ndarray:
    """Per rater: mean over the items they rated under both conditions of second - first."""  # grid [R, I, C]
    diff = grid[:, :, second] - grid[:, :, first]  # [R, I]
    both = np.isfinite(diff)
    has = both.any(axis=1)
    return np.where(both, diff, 0.0).sum(axis=1)[has] / both.sum(axis=1)[has]


def mos_analysis(cells: MosCells, n_boot: int, rng: np.random.Generator) -> tuple[list[ConditionMOS], list[Comparison]]:
    replicates = bootstrap_means(cells, n_boot, rng)  # [B, C]
    low, high = percentile_interval(replicates)
    table = []
    for c, name in enumerate(cells.conditions):
        mask = cells.condition == c
        scores = cells.score[mask]
        table.append(ConditionMOS(
            condition=name, mos=float(scores.mean()), sd=float(scores.std(ddof=1)) if len(scores) > 1 else math.nan,
            ci_low=float(low[c]), ci_high=float(high[c]), n_ratings=int(mask.sum()),
            n_raters=len(np.unique(cells.rater[mask])), n_items=len(np.unique(cells.item[mask]))))
    grid = cells.grid()
    comparisons = []
    for a, b in itertools.combinations(range(len(cells.conditions)), 2):
        d_low, d_high = percentile_interval(replicates[:, b] - replicates[:, a])
        differences = per_rater_differences(grid, a, b)
        statistic, p = signed_rank(differences)
        comparisons.append(Comparison(
            first=cells.conditions[a], second=cells.conditions[b], estimate=table[b].mos - table[a].mos,
            ci_low=float(d_low), ci_high=float(d_high), n_raters=len(differences), statistic=statistic, p=p))
    return table, with_holm(comparisons)
