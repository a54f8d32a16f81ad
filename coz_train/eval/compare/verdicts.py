"""Each pair's paired statistics and its verdict; the Holm correction runs over the whole table.

For a pair (a, b), a metric and a scale, on the n images where every run involved has a finite score:
- the per-image difference d_i = mean over a's runs - mean over b's runs (within a group: the runs' own
  a - b, averaged over the group's runs); `mean_diff` = mean_i d_i, in the metric's units;
- its 95% interval: percentile bootstrap over images (`coz_train.stats.bootstrap.mean_interval`, n_boot
  replicates, seeded per pair: the same runs give the same numbers whatever else is in the table);
- p: two-sided Wilcoxon signed-rank test on the d_i (`coz_train.stats.significance`), p_holm: Holm over every
  pair of the table (all metrics and scales);
- seed replicates: within a group, each run's own a - b; across groups, each run of a side with several runs
  against the other side's mean (a group of one run is a fixed reference). A replicate *holds* when its own
  95% bootstrap interval lies wholly on the side of zero of `mean_diff`; `seed_spread` is the standard
  deviation (ddof 1) of the replicates' mean differences.

Verdicts:
- `holds`: significant (p_holm < alpha and the interval excludes zero), at least two replicates, every one
  of them holds, and |mean_diff| exceeds the between-seed spread;
- `single-seed`: significant, with one replicate only (one run on each side): it may not survive another seed;
- `seed-dependent`: significant on the pooled images, but some replicate does not hold, or |mean_diff| is
  within the spread of the replicates: not a verdict;
- `no difference`: not significant; `not tested`: fewer than two images with scores.
The better side follows the metric's direction (`coz_train.eval.tables.higher_is_better`).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

import numpy as np

from coz_train.eval.compare.pairs import Pair
from coz_train.stats.bootstrap import mean_interval
from coz_train.stats.significance import holm, signed_rank

HOLDS, SINGLE_SEED, SEED_DEPENDENT, NO_DIFFERENCE, NOT_TESTED = (
    "holds", "single-seed", "seed-dependent", "no difference", "not tested")
VERDICTS = (HOLDS, SINGLE_SEED, SEED_DEPENDENT, NO_DIFFERENCE, NOT_TESTED)


def higher_is_better(metric: str, where: str) -> bool:
    """The metric's direction, from the one function the eval tables use; an unknown name is a clear error."""
    from coz_train.eval.tables import higher_is_better as direction

    try:
        return direction(metric)
    except KeyError:
        raise ValueError(f"{where} has scores of '{metric}', a metric whose direction (is higher better?) is not "
                         "known: add it to coz_train.image_quality's registry, or leave it out with --metrics.") from None


@dataclass(frozen=True)
class Replicate:
    label: str            # the run it stands for (its seed)
    mean_diff: float
    ci_low: float
    ci_high: float
    holds: bool


@dataclass(frozen=True)
class Comparison:
    pair: Pair
    higher_is_better: bool
    n: int
    mean_diff: float      # a - b, the metric's units
    ci_low: float
    ci_high: float
    statistic: float
    p: float
    replicates: tuple[Replicate, ...]
    seed_spread: float    # SD (ddof 1) of the replicates' mean differences; NaN with one replicate
    p_holm: float = math.nan
    verdict: str = NOT_TESTED

    @property
    def seeds_holding(self) -> int:
        return sum(r.holds for r in self.replicates)

    @property
    def better(self) -> str:
        """"a" or "b" for a significant difference (any verdict but no difference), else ""."""
        if self.verdict in (NO_DIFFERENCE, NOT_TESTED) or self.mean_diff == 0:
            return ""
        return "a" if (self.mean_diff > 0) == self.higher_is_better else "b"


def _values(pair: Pair, images: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """[k, n] scores of a's runs and [l, n] of b's runs."""
    a = np.stack([run.values(pair.a.method, pair.scale, pair.metric, images) for run in pair.a.group.runs])
    b = np.stack([run.values(pair.b.method, pair.scale, pair.metric, images) for run in pair.b.group.runs])
    return a, b


def _replicates(pair: Pair, a: np.ndarray, b: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(label, [n] differences) of each seed replicate."""
    if pair.within:
        return list(zip(pair.a.group.seeds, a - b, strict=True))
    if len(a) == 1 and len(b) == 1:
        return [(f"{pair.a.group.seeds[0]} vs {pair.b.group.seeds[0]}", a[0] - b[0])]
    out = []
    if len(a) > 1:
        out += [(f"{pair.a.group.name} {seed}", row - b.mean(axis=0)) for seed, row in zip(pair.a.group.seeds, a,
                                                                                          strict=True)]
    if len(b) > 1:
        out += [(f"{pair.b.group.name} {seed}", a.mean(axis=0) - row) for seed, row in zip(pair.b.group.seeds, b,
                                                                                          strict=True)]
    return out


def has_scores(pair: Pair) -> bool:
    """Whether every run of both sides scored this method, metric and scale at all."""
    return all((side.method, pair.scale, pair.metric) in run.scores
               for side in (pair.a, pair.b) for run in side.group.runs)


def compare_pair(pair: Pair, images: list[str], n_boot: int, seed: int, higher: bool) -> Comparison:
    a, b = _values(pair, images)
    finite = np.isfinite(a).all(axis=0) & np.isfinite(b).all(axis=0)  # [n]
    a, b = a[:, finite], b[:, finite]
    d = a.mean(axis=0) - b.mean(axis=0)  # [n]
    key = zlib.crc32(f"{pair.a.group.name}|{pair.a.method}|{pair.b.group.name}|{pair.b.method}|{pair.metric}|"
                     f"{pair.scale}".encode())
    low, high = mean_interval(d, n_boot, np.random.default_rng([seed, key, 0]))
    statistic, p = signed_rank(d)
    replicates = []
    mean_diff = float(d.mean()) if len(d) else math.nan
    for k, (label, diff) in enumerate(_replicates(pair, a, b), start=1):
        r_low, r_high = mean_interval(diff, n_boot, np.random.default_rng([seed, key, k]))
        holds = (mean_diff > 0 and r_low > 0) or (mean_diff < 0 and r_high < 0)
        replicates.append(Replicate(label, float(diff.mean()) if len(diff) else math.nan, r_low, r_high, bool(holds)))
    spread = float(np.std([r.mean_diff for r in replicates], ddof=1)) if len(replicates) > 1 else math.nan
    return Comparison(pair, higher, int(finite.sum()), mean_diff, low, high, statistic, p, tuple(replicates), spread)


def verdict(c: Comparison, alpha: float) -> str:
    if not math.isfinite(c.p_holm):
        return NOT_TESTED
    if not (c.p_holm < alpha and (c.ci_low > 0 or c.ci_high < 0)):
        return NO_DIFFERENCE
    if len(c.replicates) == 1:
        return SINGLE_SEED
    if c.seeds_holding == len(c.replicates) and abs(c.mean_diff) > c.seed_spread:
        return HOLDS
    return SEED_DEPENDENT


def compare_all(pairs: list[Pair], images: list[str], n_boot: int, seed: int, alpha: float) -> list[Comparison]:
    """Every pair's comparison, Holm-corrected over all of them, with its verdict."""
    directions: dict[str, bool] = {}
    for pair in pairs:
        if pair.metric not in directions:
            directions[pair.metric] = higher_is_better(pair.metric, pair.a.group.runs[0].name)
    comparisons = [compare_pair(pair, images, n_boot, seed, directions[pair.metric]) for pair in pairs]
    adjusted = holm([c.p for c in comparisons])
    out = []
    for c, q in zip(comparisons, adjusted, strict=True):
        c = replace(c, p_holm=q)
        out.append(replace(c, verdict=verdict(c, alpha)))
    return out
