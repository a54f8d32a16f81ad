"""What `analyze` returns, and how it is put together from the ratings.

Per test ("image", "text") with ratings: MOS per condition with two-way bootstrap intervals and SD,
paired tests between every pair of conditions (Holm-corrected), Krippendorff's alpha (interval), and for
pairwise ratings Bradley-Terry scores with intervals, the win-rate matrix and their paired tests. The
screening (screening.py) runs on all ratings first; the analysis is then done twice, with every rater
and without the flagged ones, and `drop_flagged` says which of the two is the study's result
(`Results.tests`); the other is kept for the report (`Results.alternative`). When nobody is flagged the
two are the same object. Hidden checks never enter the statistics (cells.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from coz_train.stats.agreement import alpha_of_values
from coz_train.study.analysis.cells import condition_order, mos_cells, pair_cells
from coz_train.study.analysis.mos import ConditionMOS, mos_analysis
from coz_train.study.analysis.pairwise import BradleyTerry, pairwise_analysis
from coz_train.study.analysis.screening import RaterCheck, ScreeningRules, flagged, screen
from coz_train.study.analysis.significance import Comparison
from coz_train.study.ratings import TESTS, Rating

DROPPED = "flagged raters dropped"
KEPT = "all raters"


@dataclass(frozen=True)
class TestResult:
    __test__ = False  # not a pytest test class, whatever module imports it

    test: str
    n_raters: int
    n_items: int
    n_ratings: int                       # ordinary ratings (checks excluded)
    mos: list[ConditionMOS]              # display order; empty for a pairwise-only test
    mos_comparisons: list[Comparison]    # every pair of conditions, Holm-corrected
    alpha: float                         # Krippendorff's alpha (interval) of the MOS ratings, NaN if none
    bradley_terry: BradleyTerry | None = None
    pair_comparisons: list[Comparison] | None = None
    pair_alpha: float = math.nan         # alpha (interval) of the pairwise answers as +1 / 0 / -1


@dataclass(frozen=True)
class Results:
    conditions: list[str]                # display order
    drop_flagged: bool
    raters: list[RaterCheck]             # every rater's screening, flagged or not
    all_raters: dict[str, TestResult]    # per test, every rater
    screened: dict[str, TestResult]      # per test, flagged raters dropped (all_raters itself if none is)
    n_boot: int
    seed: int
    n_checks: int                        # hidden check ratings (screening only)
    rules: ScreeningRules

    @property
    def flags(self) -> list[RaterCheck]:
        return [r for r in self.raters if r.flagged]

    @property
    def tests(self) -> dict[str, TestResult]:
        """The study's result: without the flagged raters when drop_flagged, else with every rater."""
        return self.screened if self.drop_flagged else self.all_raters

    @property
    def alternative(self) -> dict[str, TestResult]:
        """The other analysis, reported beside the result."""
        return self.all_raters if self.drop_flagged else self.screened

    def label(self, primary: bool = True) -> str:
        """Which raters the result (or, primary=False, the alternative) was computed with."""
        return DROPPED if self.drop_flagged == primary else KEPT

def _test_result(ratings: list[Rating], test: str, order: list[str], n_boot: int, seed: int) -> TestResult | None:
    mos = mos_cells(ratings, test, order)
    pairs = pair_cells(ratings, test, order)
    if mos is None and pairs is None:
        return None
    test_index = TESTS.index(test)
    table, comparisons, alpha = [], [], math.nan
    if mos is not None:
        table, comparisons = mos_analysis(mos, n_boot, np.random.default_rng([seed, test_index, 0]))
        alpha = alpha_of_values(mos.item * len(mos.conditions) + mos.condition, mos.score)
    bt, pair_comparisons, pair_alpha = None, None, math.nan
    if pairs is not None:
        bt, pair_comparisons = pairwise_analysis(pairs, n_boot, np.random.default_rng([seed, test_index, 1]))
        c = len(pairs.conditions)
        pair_alpha = alpha_of_values((pairs.item * c + pairs.first) * c + pairs.second, 1.0 - 2.0 * pairs.outcome)
    rows = [r for r in ratings if r.test == test and not r.check]
    return TestResult(test=test, n_raters=len({r.rater for r in rows}), n_items=len({r.item for r in rows}),
                      n_ratings=len(rows), mos=table, mos_comparisons=comparisons, alpha=alpha,
                      bradley_terry=bt, pair_comparisons=pair_comparisons, pair_alpha=pair_alpha)


def _tests(ratings: list[Rating], order: list[str], n_boot: int, seed: int) -> dict[str, TestResult]:
    out = {}
    for test in TESTS:
        result = _test_result(ratings, test, order, n_boot, seed)
        if result is not None:
            out[test] = result
    return out


def analyze(ratings: list[Rating], conditions: list[str] | None = None, drop_flagged: bool = True,
            n_boot: int = 2000, seed: int = 0, *, rules: ScreeningRules | None = None) -> Results:
    """The whole analysis of a study's ratings (see the package docstring for the methods).

    `conditions` is the display order (default: order of first appearance; conditions missing from it are
    appended in that order). `rules` are the screening thresholds (default `ScreeningRules()`).
    """
    if not ratings:
        raise ValueError("No ratings to analyse: has anyone answered yet?")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    rules = rules or ScreeningRules()
    order = condition_order(ratings, conditions)
    checks = screen(ratings, rules)
    bad = flagged(checks)
    everyone = _tests(ratings, order, n_boot, seed)
    kept = [r for r in ratings if r.rater not in bad]
    if not bad:
        screened = everyone
    elif kept:
        screened = _tests(kept, order, n_boot, seed)
    else:
        screened = {}
    return Results(conditions=order, drop_flagged=drop_flagged, raters=checks, all_raters=everyone,
                   screened=screened, n_boot=n_boot, seed=seed, n_checks=sum(1 for r in ratings if r.check),
                   rules=rules)
