"""The cells a test's statistics run on: every ordinary rating of one test as index arrays.

Checks (`check="repeat"` or `"control"`) never enter here: they are for screening only (screening.py
reads them from the ratings), so a repeated item is not counted twice towards a MOS and the degraded
control is not a condition of the study.

A MOS cell is (rater, item, condition, score). A pairwise cell is (rater, item, first, second, outcome)
with `first` before `second` in display order whatever side each was shown on, and `outcome` the share
of the comparison `first` won: 1.0, 0.0, or 0.5 for "unsure" (a tie, half a win each).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coz_train.study.ratings import Rating

UNSURE = 0.5  # an "unsure" pairwise answer: half a win to each side (a tie)


def condition_order(ratings: list[Rating], conditions: list[str] | None = None) -> list[str]:
    """Display order: `conditions` first, then any other condition of an ordinary rating as it first appears.

    A condition named in `conditions` but absent from the ratings stays in the list (a test that lacks it,
    e.g. the text test for a method without prompts, simply leaves it out).
    """
    order = list(dict.fromkeys(conditions or []))
    seen = set(order)
    for r in ratings:
        if r.check:
            continue
        for c in (r.condition,) if r.kind == "mos" else (r.condition_left, r.condition_right):
            if c and c not in seen:
                order.append(c)
                seen.add(c)
    return order


def _index(values: list[str]) -> tuple[list[str], np.ndarray]:
    names = list(dict.fromkeys(values))
    lookup = {v: i for i, v in enumerate(names)}
    return names, np.array([lookup[v] for v in values], dtype=np.int64)


@dataclass(frozen=True)
class MosCells:
    raters: list[str]
    items: list[str]
    conditions: list[str]   # display order, only those rated in this test
    rater: np.ndarray       # [N] index into raters
    item: np.ndarray        # [N] index into items
    condition: np.ndarray   # [N] index into conditions
    score: np.ndarray       # [N] float, 1..5

    def __len__(self) -> int:
        return len(self.score)

    def grid(self) -> np.ndarray:
        """Mean score per (rater, item, condition), NaN where that cell was not rated."""  # [R, I, C]
        shape = (len(self.raters), len(self.items), len(self.conditions))
        total = np.zeros(shape)
        count = np.zeros(shape)
        np.add.at(total, (self.rater, self.item, self.condition), self.score)
        np.add.at(count, (self.rater, self.item, self.condition), 1)
        with np.errstate(invalid="ignore"):
            return total / np.where(count > 0, count, np.nan)


@dataclass(frozen=True)
class PairCells:
    raters: list[str]
    items: list[str]
    conditions: list[str]   # display order, only those compared in this test
    rater: np.ndarray       # [N]
    item: np.ndarray        # [N]
    first: np.ndarray       # [N] index into conditions, earlier in display order
    second: np.ndarray      # [N] index into conditions, later in display order
    outcome: np.ndarray     # [N] share won by `first`: 1.0, 0.0 or UNSURE

    def __len__(self) -> int:
        return len(self.outcome)


def mos_cells(ratings: list[Rating], test: str, order: list[str]) -> MosCells | None:
    rows = [r for r in ratings if r.kind == "mos" and r.test == test and not r.check]
    if not rows:
        return None
    present = {r.condition for r in rows}
    conditions = [c for c in order if c in present]
    lookup = {c: i for i, c in enumerate(conditions)}
    raters, rater = _index([r.rater for r in rows])
    items, item = _index([r.item for r in rows])
    return MosCells(raters, items, conditions, rater, item,
                    np.array([lookup[r.condition] for r in rows], dtype=np.int64),
                    np.array([float(r.score) for r in rows]))


def pair_cells(ratings: list[Rating], test: str, order: list[str]) -> PairCells | None:
    rows = [r for r in ratings if r.kind == "pair" and r.test == test and not r.check
            and r.condition_left != r.condition_right]
    if not rows:
        return None
    present = {c for r in rows for c in (r.condition_left, r.condition_right)}
    conditions = [c for c in order if c in present]
    lookup = {c: i for i, c in enumerate(conditions)}
    first, second, outcome = [], [], []
    for r in rows:
        a, b = sorted((r.condition_left, r.condition_right), key=lookup.__getitem__)
        first.append(lookup[a])
        second.append(lookup[b])
        outcome.append(UNSURE if r.choice == "unsure" else float(r.winner == a))
    raters, rater = _index([r.rater for r in rows])
    items, item = _index([r.item for r in rows])
    return PairCells(raters, items, conditions, rater, item, np.array(first, dtype=np.int64),
                     np.array(second, dtype=np.int64), np.array(outcome))
