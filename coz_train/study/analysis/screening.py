"""Rater screening: the hidden checks and the agreement with the other raters, one reason per rule broken.

Rules (thresholds in `ScreeningRules`; a rater is flagged by any one of them):
- repeat: a repeated item (`check="repeat"`, `repeat_of` the first showing's task) scored differently
  from its first showing by more than `max_repeat_difference` points on average (MOS), or a pairwise
  repeat answered for the other condition in more than `max_repeat_flips` of the repeats (an unsure
  answer on one of the two showings counts half). An honest rater's repeat differs from the first
  showing by 0 or 1 point, now and then 2; more than 2 on average is not noise. (A random scorer's
  repeats differ by 1.6 on average: the agreement rule below is the one that catches them.)
- control: the clearly degraded control (`check="control"`) rated `control_high` (Good) or better on
  average (MOS), or, in a pairwise control, the degraded side chosen in more than `max_control_chosen`
  of the controls. For a pairwise control the degraded side is the condition named in the rating's
  `condition` field; a pairwise control without it cannot be judged and is skipped.
- fast: median answer time under `min_median_seconds` (0 s is "not recorded" and ignored): nobody
  judges a large image in less than that.
- agreement (MOS): the Pearson correlation between the rater's scores and the mean score of the other
  raters on the same (test, item, condition) cells (leave-one-out; scores standardised within each test,
  the tests pooled) below `min_correlation`, over at least `min_overlap` shared cells; or the same score
  everywhere (over at least `min_same` cells). Pearson is blind to a rater's bias (a strict rater who
  orders the conditions like everyone else passes) and catches random scorers (correlation about 0). It
  takes the place of ITU-R BT.500's observer screening (a kurtosis test per presentation, then counting
  a rater's scores outside the presentation's mean +- 2 SD on both sides), which is made for continuous
  scales with many observers per presentation: on a 5-point scale the +-2 SD bounds fall between the
  scale points, so a few raters' spread decides whether a 1 or a 5 is an outlier, and a crowd study
  where each rater sees a subset of the items has few raters per presentation. The correlation pools all
  of a rater's cells into one number whose spread under random answering is known. An honest rater on
  the paper's effect sizes correlates at about 0.5-0.8 with the others, a random scorer at 0 +-
  1/sqrt(cells); below 30 shared cells the two overlap too much (sd about 0.2) and the rule abstains. A
  rater who rated every item of the paper's two tests (20 items, 3 conditions) has 120 cells. In
  simulations of that size (simulate.py, 29 raters of whom 4 careless, 60 studies) no honest rater was
  flagged and every planted careless rater was. Pairwise answers are left to the hidden checks and the
  time rule: one binary choice is too noisy for this rule (in simulations with the paper's effect sizes
  honest raters' correlations with the others ran from -0.3 to 0.5, median 0.2), and dropping the raters
  who disagree with the majority would make the preferences look stronger than they are.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np

from coz_train.study.ratings import Rating


@dataclass(frozen=True)
class ScreeningRules:
    max_repeat_difference: float = 2.0   # MOS points, mean |repeat - first showing| over a rater's repeats
    max_repeat_flips: float = 0.5        # share of pairwise repeats answered for the other condition
    control_high: float = 4.0            # mean score of the degraded control at or above this (4 = Good)
    max_control_chosen: float = 0.5      # share of pairwise controls where the degraded side won
    min_median_seconds: float = 1.0      # median seconds per answer
    min_correlation: float = 0.25        # Pearson with the leave-one-out mean of the other raters
    min_overlap: int = 30                # cells shared with other raters before the correlation is judged
    min_same: int = 10                   # shared cells all given the same answer: flagged from this many


@dataclass(frozen=True)
class RaterCheck:
    """One rater's screening numbers (None where the rater had nothing to measure) and the rules broken."""

    rater: str
    n_ratings: int
    repeat_difference: float | None = None   # MOS: mean |difference|
    repeat_flips: float | None = None        # pairwise: share answered for the other condition
    control_score: float | None = None       # MOS: mean score of the control
    control_chosen: float | None = None      # pairwise: share of controls won by the degraded side
    median_seconds: float | None = None
    correlation: float | None = None
    n_overlap: int = 0
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _repeats(rows: list[Rating], by_task: dict[str, Rating]) -> tuple[list[float], list[float]]:
    differences, flips = [], []
    for r in rows:
        if r.check != "repeat" or r.repeat_of not in by_task:
            continue
        first = by_task[r.repeat_of]
        if r.kind == "mos" and first.kind == "mos":
            differences.append(abs(float(r.score) - float(first.score)))
        elif r.kind == "pair" and first.kind == "pair":
            unsure = (r.choice == "unsure") + (first.choice == "unsure")
            flips.append(0.5 if unsure == 1 else float(unsure == 0 and r.winner != first.winner))
    return differences, flips


def _controls(rows: list[Rating]) -> tuple[list[float], list[float]]:
    scores, chosen = [], []
    for r in rows:
        if r.check != "control":
            continue
        if r.kind == "mos":
            scores.append(float(r.score))
        elif r.condition:  # pairwise: `condition` names the degraded side
            chosen.append(0.5 if r.choice == "unsure" else float(r.winner == r.condition))
    return scores, chosen


def agreement_with_others(ratings: list[Rating]) -> dict[str, tuple[float | None, int, bool]]:
    """Per rater: (Pearson with the leave-one-out mean of the others, shared cells, answered the same everywhere).

    MOS ratings only, standardised within each test, all tests pooled.
    """
    cells = [(r.rater, (r.test, r.item, r.condition), float(r.score), r.test)
             for r in ratings if r.kind == "mos" and not r.check]
    by_test: dict[str, list[float]] = defaultdict(list)
    for _, _, value, test in cells:
        by_test[test].append(value)
    scale = {t: (float(np.mean(v)), float(np.std(v))) for t, v in by_test.items()}
    z = [(rater, unit, (value - scale[t][0]) / scale[t][1] if scale[t][1] > 0 else 0.0, value)
         for rater, unit, value, t in cells]
    total: dict[tuple, float] = defaultdict(float)
    count: dict[tuple, int] = defaultdict(int)
    for _, unit, value, _ in z:
        total[unit] += value
        count[unit] += 1
    own: dict[str, list[float]] = defaultdict(list)
    others: dict[str, list[float]] = defaultdict(list)
    answers: dict[str, set[float]] = defaultdict(set)
    for rater, unit, value, original in z:
        if count[unit] > 1:
            own[rater].append(value)
            others[rater].append((total[unit] - value) / (count[unit] - 1))
            answers[rater].add(original)
    out = {}
    for rater in own:
        x, y = np.array(own[rater]), np.array(others[rater])
        r = float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 and x.std() > 0 and y.std() > 0 else None
        out[rater] = (r, len(x), len(answers[rater]) == 1)
    return out


def screen(ratings: list[Rating], rules: ScreeningRules | None = None) -> list[RaterCheck]:
    """Every rater's screening numbers and reasons, in order of first appearance."""
    rules = rules or ScreeningRules()
    by_rater: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        by_rater[r.rater].append(r)
    agreement = agreement_with_others(ratings)
    checks = []
    for rater, rows in by_rater.items():
        by_task = {r.task: r for r in rows}
        differences, flips = _repeats(rows, by_task)
        scores, chosen = _controls(rows)
        times = [r.seconds for r in rows if r.seconds > 0]
        correlation, overlap, same = agreement.get(rater, (None, 0, False))
        check = RaterCheck(rater=rater, n_ratings=len(rows), repeat_difference=_mean(differences),
                           repeat_flips=_mean(flips), control_score=_mean(scores), control_chosen=_mean(chosen),
                           median_seconds=float(np.median(times)) if times else None,
                           correlation=correlation, n_overlap=overlap)
        checks.append(_judge(check, rules, len(differences), len(flips), len(scores), len(chosen), same))
    return checks


def _judge(c: RaterCheck, rules: ScreeningRules, n_diff: int, n_flips: int, n_scores: int, n_chosen: int,
           same: bool) -> RaterCheck:
    reasons = []
    if c.repeat_difference is not None and c.repeat_difference > rules.max_repeat_difference:
        reasons.append(f"repeat: repeated items scored {c.repeat_difference:.2f} points from their first showing "
                       f"on average over {n_diff} (limit {rules.max_repeat_difference:g})")
    if c.repeat_flips is not None and c.repeat_flips > rules.max_repeat_flips:
        reasons.append(f"repeat: {c.repeat_flips:.0%} of {n_flips} repeated pairs answered for the other condition "
                       f"(limit {rules.max_repeat_flips:.0%})")
    if c.control_score is not None and c.control_score >= rules.control_high:
        reasons.append(f"control: the degraded control scored {c.control_score:.2f} on average over {n_scores} "
                       f"(flagged at {rules.control_high:g} or more)")
    if c.control_chosen is not None and c.control_chosen > rules.max_control_chosen:
        reasons.append(f"control: the degraded side chosen in {c.control_chosen:.0%} of {n_chosen} controls "
                       f"(limit {rules.max_control_chosen:.0%})")
    if c.median_seconds is not None and c.median_seconds < rules.min_median_seconds:
        reasons.append(f"fast: median {c.median_seconds:.2f} s per answer (limit {rules.min_median_seconds:g} s)")
    if same and c.n_overlap >= rules.min_same:
        reasons.append(f"agreement: the same answer for all {c.n_overlap} shared cells")
    elif (c.n_overlap >= rules.min_overlap and c.correlation is not None
          and c.correlation < rules.min_correlation):
        reasons.append(f"agreement: correlation {c.correlation:.2f} with the other raters over {c.n_overlap} "
                       f"cells (limit {rules.min_correlation:g})")
    return replace(c, reasons=tuple(reasons))


def flagged(checks: list[RaterCheck]) -> set[str]:
    return {c.rater for c in checks if c.flagged}
