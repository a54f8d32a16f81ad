"""The analysis on disk: `results.md` (for people), `results.csv` (one tidy row per number), `ratings.csv`, the figure.

`results.csv` has the columns `CSV_COLUMNS`; `raters` says which analysis a row belongs to ("screened":
flagged raters dropped, "all": every rater) and `primary` whether that one is the study's result
(drop_flagged). Sections: `mos` (per condition), `mos_difference` and `bt_difference` (condition minus
versus, with the Wilcoxon and Holm p-values and the stars), `agreement` (Krippendorff's alpha),
`bradley_terry` (per condition), `win_rate` (condition over versus) and `screening` (one row per flagged
rater, the reason in `note`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from coz_train.study.analysis.figure import save_figure
from coz_train.study.analysis.results import Results, TestResult
from coz_train.study.analysis.significance import Comparison
from coz_train.study.ratings import Rating, write_csv

CSV_COLUMNS = ("raters", "primary", "test", "section", "condition", "versus", "estimate", "sd", "ci_low", "ci_high",
               "n_ratings", "n_raters", "n_items", "p", "p_holm", "stars", "note")
TITLES = {"image": "Image quality MOS", "text": "Text MOS (how well the prompt describes the zoomed image)"}
FILES = ("results.md", "results.csv", "ratings.csv", "results.png")


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _ci(low: float, high: float) -> str:
    return f"[{_num(low)}, {_num(high)}]"


def _comparison_table(comparisons: list[Comparison], what: str) -> list[str]:
    lines = [f"| comparison | {what} | 95% CI | raters | p | p (Holm) | |", "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c.second} - {c.first} | {c.estimate:+.2f} | {_ci(c.ci_low, c.ci_high)} | {c.n_raters} "
                     f"| {_p(c.p)} | {_p(c.p_holm)} | {c.stars} |")
    return lines


def _test_section(t: TestResult, level: str) -> list[str]:
    lines = [f"{level} {TITLES.get(t.test, t.test)}", "",
             f"{t.n_ratings} ratings from {t.n_raters} raters on {t.n_items} items.", ""]
    if t.mos:
        lines += ["| condition | MOS | 95% CI | SD | ratings | raters | items |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {m.condition} | {m.mos:.2f} | {_ci(m.ci_low, m.ci_high)} | {_num(m.sd)} | {m.n_ratings} "
                  f"| {m.n_raters} | {m.n_items} |" for m in t.mos]
        if t.mos_comparisons:
            lines += ["", f"Paired comparisons over {len(t.mos_comparisons)} pairs:", ""]
            lines += _comparison_table(t.mos_comparisons, "MOS difference")
        lines += ["", f"Agreement between raters: Krippendorff's alpha (interval) = {_num(t.alpha, 3)}.", ""]
    bt = t.bradley_terry
    if bt is not None:
        lines += [f"Pairwise comparisons: {bt.n} from {bt.n_raters} raters on {bt.n_items} items, "
                  f"{bt.n_unsure} unsure (a tie: half a win each).", "",
                  "| condition | Bradley-Terry score | 95% CI |", "|---|---|---|"]
        lines += [f"| {c} | {s:+.2f} | {_ci(lo, hi)} |"
                  for c, s, lo, hi in zip(bt.conditions, bt.scores, bt.ci_low, bt.ci_high, strict=True)]
        lines += ["", "Win rate of the row over the column (comparisons in brackets):", "",
                  "| | " + " | ".join(bt.conditions) + " |", "|---" * (len(bt.conditions) + 1) + "|"]
        for i, c in enumerate(bt.conditions):
            cells = ["" if i == j else f"{_num(bt.win_rate[i][j])} ({bt.n_comparisons[i][j]})"
                     for j in range(len(bt.conditions))]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        if t.pair_comparisons:
            lines += ["", "Paired comparisons (per rater: +1 second chosen, 0 unsure, -1 first chosen):", ""]
            lines += _comparison_table(t.pair_comparisons, "score difference")
        lines += ["", f"Agreement on the pairwise answers: Krippendorff's alpha (interval) = {_num(t.pair_alpha, 3)}.",
                  ""]
    return lines


def _screening_section(results: Results) -> list[str]:
    r = results.rules
    lines = ["## Screening", "",
             f"{len(results.flags)} of {len(results.raters)} raters flagged. Rules: repeated items more than "
             f"{r.max_repeat_difference:g} points from their first showing on average (pairwise: more than "
             f"{r.max_repeat_flips:.0%} answered for the other condition); the degraded control scored "
             f"{r.control_high:g} or more on average (pairwise: chosen in more than {r.max_control_chosen:.0%}); "
             f"median answer time under {r.min_median_seconds:g} s; MOS scores' Pearson correlation with the other "
             f"raters' mean below {r.min_correlation:g} over at least {r.min_overlap} shared cells, or the same answer "
             f"on all of at least {r.min_same}.", "",
             "| rater | ratings | repeat diff. | control score | repeat flips | control chosen | median s "
             "| correlation | flagged because |", "|---|---|---|---|---|---|---|---|---|"]
    for c in results.raters:
        lines.append(f"| {c.rater} | {c.n_ratings} | {_num(c.repeat_difference)} | {_num(c.control_score)} "
                     f"| {_num(c.repeat_flips)} | {_num(c.control_chosen)} | {_num(c.median_seconds, 1)} "
                     f"| {_num(c.correlation)} | {c.reason or '-'} |")
    return lines + [""]


METHODS = """## Methods

- MOS: mean of the ordinary ratings of a condition (hidden repeats and controls excluded); SD of the
  individual ratings. 95% intervals: percentile intervals of a two-way bootstrap that resamples raters
  and items independently and keeps the ratings in the crossing (each as often as its rater times its
  item was drawn), so that both new raters and new images are accounted for.
- Paired comparisons: per rater, the mean difference over the items rated under both conditions;
  Wilcoxon signed-rank test across raters (exact up to 16 raters), Holm-corrected across the pairs of a
  test; stars from the corrected p: *** < 0.001, ** < 0.01, * < 0.05, ns otherwise. The difference's
  interval comes from the same two-way bootstrap. The test treats the images as fixed (would new raters
  agree on these images?), the interval resamples them too (and new images?), so an interval can
  include 0 where the test is significant when the images differ a lot.
- Pairwise: Bradley-Terry log-strengths (centred, small ridge), "unsure" a tie worth half a win to
  each side, two-way bootstrap intervals.
- Agreement: Krippendorff's alpha with the interval metric, units = (item, condition).
- Screening: see the rules above; the tables are given both with and without the flagged raters.
  Dropping raters who disagree with the others makes the differences look a little stronger: compare
  the two before reporting either.
"""


def markdown(results: Results) -> str:
    n_raters = len(results.raters)
    flagged = len(results.flags)
    lines = ["# Human study: results", "",
             f"{n_raters} raters, {flagged} flagged by the screening; the tables below are with "
             f"{results.label()}. {results.n_checks} hidden check ratings were used for screening only. "
             f"Intervals: {results.n_boot} two-way bootstrap replicates (raters x items), seed {results.seed}.", ""]
    if not results.tests:
        lines += ["Every rater was flagged: nothing is left to analyse without them.", ""]
    for t in results.tests.values():
        lines += _test_section(t, "##")
    if results.screened is results.all_raters:
        lines += ["## With all raters", "", "No rater was flagged: the analysis with all raters is the one above.", ""]
    else:
        lines += [f"## The same with {results.label(primary=False)}", ""]
        if not results.alternative:
            lines += ["Every rater was flagged: nothing is left without them.", ""]
        for t in results.alternative.values():
            lines += _test_section(t, "###")
    lines += _screening_section(results)
    return "\n".join(lines + [METHODS])


def _row(raters: str, primary: bool, test: str, section: str, **values: object) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(CSV_COLUMNS, "")
    row.update(raters=raters, primary=int(primary), test=test, section=section, **values)
    return row


def _comparison_rows(raters: str, primary: bool, test: str, section: str, comparisons: list[Comparison]) -> list:
    return [_row(raters, primary, test, section, condition=c.second, versus=c.first, estimate=c.estimate,
                 ci_low=c.ci_low, ci_high=c.ci_high, n_raters=c.n_raters, p=c.p, p_holm=c.p_holm, stars=c.stars)
            for c in comparisons]


def csv_rows(results: Results) -> list[dict[str, object]]:
    rows = []
    if results.screened is results.all_raters:  # nobody flagged: one analysis
        sets = [("all", results.all_raters, True)]
    else:
        sets = [("screened", results.screened, results.drop_flagged),
                ("all", results.all_raters, not results.drop_flagged)]
    for name, tests, primary in sets:
        for test, t in tests.items():
            for m in t.mos:
                rows.append(_row(name, primary, test, "mos", condition=m.condition, estimate=m.mos, sd=m.sd,
                                 ci_low=m.ci_low, ci_high=m.ci_high, n_ratings=m.n_ratings, n_raters=m.n_raters,
                                 n_items=m.n_items))
            rows += _comparison_rows(name, primary, test, "mos_difference", t.mos_comparisons)
            if t.mos:
                rows.append(_row(name, primary, test, "agreement", estimate=t.alpha, n_ratings=t.n_ratings,
                                 n_raters=t.n_raters, n_items=t.n_items, note="krippendorff_alpha_interval"))
            bt = t.bradley_terry
            if bt is None:
                continue
            for c, s, lo, hi in zip(bt.conditions, bt.scores, bt.ci_low, bt.ci_high, strict=True):
                rows.append(_row(name, primary, test, "bradley_terry", condition=c, estimate=s, ci_low=lo, ci_high=hi,
                                 n_raters=bt.n_raters, n_items=bt.n_items))
            for i, a in enumerate(bt.conditions):
                for j, b in enumerate(bt.conditions):
                    if i != j and bt.n_comparisons[i][j]:
                        rows.append(_row(name, primary, test, "win_rate", condition=a, versus=b,
                                         estimate=bt.win_rate[i][j], n_ratings=bt.n_comparisons[i][j]))
            rows += _comparison_rows(name, primary, test, "bt_difference", t.pair_comparisons or [])
            rows.append(_row(name, primary, test, "agreement", estimate=t.pair_alpha, n_raters=bt.n_raters,
                             n_items=bt.n_items, note="krippendorff_alpha_interval_pairwise"))
    for c in results.flags:
        rows.append(_row("all", True, "", "screening", condition=c.rater,
                         n_ratings=c.n_ratings, note=c.reason))
    return rows


def write_results(results: Results, out_dir: Path, ratings: list[Rating]) -> dict[str, Path]:
    """results.md, results.csv, ratings.csv (every rating, checks included) and results.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in FILES}
    paths["results.md"].write_text(markdown(results))
    with paths["results.csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(results))
    write_csv(ratings, paths["ratings.csv"])
    save_figure(results, paths["results.png"])
    return paths
