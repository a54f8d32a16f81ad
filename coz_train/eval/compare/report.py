"""The comparison on disk: `compare.md` (verdict lines first, then the tables), `compare.csv`, `compare.png`.

`compare.csv` has one row per comparison (CSV_COLUMNS): `a` and `b` name the two sides (methods within a
group, groups across), `mean_diff` is a - b in the metric's units with its 95% interval, `p` and `p_holm`
the signed-rank p-values, `seeds` the seed replicates and `seeds_holding` how many of them hold,
`better` "a" or "b" where the difference is significant, and `verdict` one of `verdicts.VERDICTS`.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path
from typing import Any

from coz_train.eval.compare.figure import save_figure
from coz_train.eval.compare.groups import Group
from coz_train.eval.compare.pairs import metric_name
from coz_train.eval.compare.runs import EvalRun, protocol_summary
from coz_train.eval.compare.verdicts import HOLDS, SEED_DEPENDENT, SINGLE_SEED, VERDICTS, Comparison

CSV_COLUMNS = ("a", "b", "group_a", "method_a", "group_b", "method_b", "metric", "higher_is_better", "scale", "n",
               "mean_diff", "ci_low", "ci_high", "p", "p_holm", "seeds", "seeds_holding", "seed_spread", "better",
               "verdict")
FILES = ("compare.md", "compare.csv", "compare.png")


def _num(value: float, signed: bool = True) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:+.3g}" if signed else f"{value:.3g}"


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def sides(c: Comparison, groups: list[Group]) -> tuple[str, str]:
    return c.pair.names(len(groups) > 1)


def verdict_line(c: Comparison, groups: list[Group]) -> str:
    """`A beats B on MUSIQ at 64x: +0.40 [+0.21, +0.57], holds in 3 of 3 seeds` (the difference winner - loser)."""
    a, b = sides(c, groups)
    winner, loser, sign = (a, b, 1.0) if c.better == "a" else (b, a, -1.0)
    across = "" if c.pair.within or c.pair.a.method != c.pair.b.method else f" with {c.pair.a.method}"
    direction = "higher" if c.higher_is_better else "lower"
    k, total = c.seeds_holding, len(c.replicates)
    if c.verdict == HOLDS:
        seeds = f"holds in {k} of {total} seeds (between-seed spread {_num(c.seed_spread, False)})"
    elif c.verdict == SINGLE_SEED:
        seeds = "single-seed verdict (one run per side: another seed may not repeat it)"
    elif k < total:
        seeds = f"holds in {k} of {total} seeds only: not a verdict"
    else:
        seeds = (f"holds in {k} of {total} seeds but within the between-seed spread ({_num(c.seed_spread, False)}): "
                 "not a verdict")
    low, high = sorted((sign * c.ci_low, sign * c.ci_high))
    return (f"{winner} beats {loser}{across} on {metric_name(c.pair.metric)} at {c.pair.scale}x ({direction} is "
            f"better): {_num(sign * c.mean_diff)} [{_num(low)}, {_num(high)}], p (Holm) {_p(c.p_holm)}, n = {c.n}, "
            f"{seeds}")


def _runs_section(groups: list[Group]) -> list[str]:
    lines = ["## Runs", "", "| group | runs | seeds |", "|---|---|---|"]
    for g in groups:
        kind = " (--group)" if g.explicit else ""
        lines.append(f"| {g.name}{kind} | {', '.join(r.name for r in g.runs)} | {'; '.join(g.seeds)} |")
    return lines + [""]


def _protocol_section(runs: list[EvalRun], images: list[str], ignored: tuple[str, ...]) -> list[str]:
    shown = protocol_summary(runs[0])
    accepted = f" Differences accepted with --ignore-key: {', '.join(ignored)}." if ignored else ""
    lines = ["## Protocol", "", f"{len(images)} images common to every run ({images[0]} ... {images[-1]}). Every run "
             "has the same values of the config keys that change results, but for those that say what is compared "
             f"(the adapter, the prompt VLM, the methods, the seeds).{accepted} The first run's:", ""]
    lines += [f"- {k}: `{v}`" for k, v in shown.items()]
    return lines + [""]


def _table(comparisons: list[Comparison], groups: list[Group]) -> list[str]:
    lines = ["| a | b | scale | n | a - b | 95% CI | p | p (Holm) | seeds holding | seed spread | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        a, b = sides(c, groups)
        better = {"a": f" ({a})", "b": f" ({b})"}.get(c.better, "")
        lines.append(f"| {a} | {b} | {c.pair.scale}x | {c.n} | {_num(c.mean_diff)} | [{_num(c.ci_low)}, "
                     f"{_num(c.ci_high)}] | {_p(c.p)} | {_p(c.p_holm)} | {c.seeds_holding}/{len(c.replicates)} "
                     f"| {_num(c.seed_spread, False)} | {c.verdict}{better} |")
    return lines


METHOD = """## How to read this

- a - b: the mean over the images of the per-image difference (a's score minus b's, each averaged over
  its group's runs), in the metric's units; 95% CI: percentile bootstrap over the images.
- p: two-sided Wilcoxon signed-rank test on the per-image differences; p (Holm): Holm-corrected over
  every comparison of this report (all metrics and scales): fewer comparisons (--baseline, --methods,
  --metrics, --scales) leave more power to each.
- Seeds: runs that differ only in a seed (the adapter's training seed or the eval seed) are one group.
  Each run's own difference (within a group) or each run against the other side's mean (across
  groups) is a replicate; it holds when its own 95% interval lies on the same side of zero as the
  pooled difference. Seed spread: the standard deviation of the replicates' mean differences.
- Verdicts: holds = significant (p (Holm) < alpha and the CI excludes 0), every replicate holds and
  |a - b| exceeds the seed spread; single-seed = significant with one run per side; seed-dependent =
  significant pooled but not in every seed or not beyond their spread; no difference = not significant.
"""


def markdown(comparisons: list[Comparison], groups: list[Group], runs: list[EvalRun], images: list[str],
             alpha: float, n_boot: int, seed: int, ignored: tuple[str, ...] = ()) -> str:
    counts = Counter(c.verdict for c in comparisons)
    summary = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])
    lines = ["# Comparison of eval runs", "",
             f"{len(comparisons)} comparisons ({summary}); alpha {alpha:g} after Holm over all of them; "
             f"{n_boot} bootstrap replicates, seed {seed}.", "", "## Verdicts", ""]
    verdicts = [c for c in comparisons if c.verdict in (HOLDS, SINGLE_SEED)]
    lines += [f"- {verdict_line(c, groups)}" for c in sorted(verdicts, key=lambda c: c.verdict != HOLDS)] or \
        ["No difference holds (see the tables for the estimates)."]
    dependent = [c for c in comparisons if c.verdict == SEED_DEPENDENT]
    if dependent:
        lines += ["", "## Seed-dependent (significant on the pooled images, not a verdict)", ""]
        lines += [f"- {verdict_line(c, groups)}" for c in dependent]
    lines += ["", *_runs_section(groups), *_protocol_section(runs, images, ignored), "## Tables", ""]
    for metric in dict.fromkeys(c.pair.metric for c in comparisons):
        rows = [c for c in comparisons if c.pair.metric == metric]
        direction = "higher" if rows[0].higher_is_better else "lower"
        lines += [f"### {metric_name(metric)} ({direction} is better)", "", *_table(rows, groups), ""]
    return "\n".join(lines + [METHOD])


def csv_rows(comparisons: list[Comparison], groups: list[Group]) -> list[dict[str, Any]]:
    rows = []
    for c in comparisons:
        a, b = sides(c, groups)
        rows.append(dict(zip(CSV_COLUMNS, (
            a, b, c.pair.a.group.name, c.pair.a.method, c.pair.b.group.name, c.pair.b.method, c.pair.metric,
            int(c.higher_is_better), c.pair.scale, c.n, c.mean_diff, c.ci_low, c.ci_high, c.p, c.p_holm,
            len(c.replicates), c.seeds_holding, c.seed_spread, c.better, c.verdict), strict=True)))
    return rows


def write_report(out: Path, comparisons: list[Comparison], groups: list[Group], runs: list[EvalRun],
                 images: list[str], alpha: float, n_boot: int, seed: int,
                 ignored: tuple[str, ...] = ()) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in FILES}
    paths["compare.md"].write_text(markdown(comparisons, groups, runs, images, alpha, n_boot, seed, ignored))
    with paths["compare.csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(comparisons, groups))
    save_figure(comparisons, groups, paths["compare.png"])
    return paths
