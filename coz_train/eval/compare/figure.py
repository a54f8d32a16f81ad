"""The comparison's figure: per metric, a forest plot of every comparison, right meaning a is better.

Each row is one comparison (a vs b at a scale): the mean per-image difference with its 95% bootstrap
interval, turned so that right of zero is better for `a` whatever the metric's direction, coloured by its
verdict; the small open circles are the seed replicates' own mean differences.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from coz_train.eval.compare.groups import Group  # noqa: E402
from coz_train.eval.compare.pairs import metric_name  # noqa: E402
from coz_train.eval.compare.verdicts import (  # noqa: E402
    HOLDS,
    NO_DIFFERENCE,
    NOT_TESTED,
    SEED_DEPENDENT,
    SINGLE_SEED,
    Comparison,
)

COLOURS = {HOLDS: "#2e7d32", SINGLE_SEED: "#1f77b4", SEED_DEPENDENT: "#e07b00", NO_DIFFERENCE: "#8c8c8c",
           NOT_TESTED: "#cccccc"}
ROW_INCHES = 0.28


def _label(c: Comparison, groups: list[Group]) -> str:
    a, b = c.pair.names(len(groups) > 1)
    return f"{a} vs {b}, {c.pair.scale}x"


def draw_figure(comparisons: list[Comparison], groups: list[Group]) -> Figure:
    metrics = list(dict.fromkeys(c.pair.metric for c in comparisons))
    rows = [sum(c.pair.metric == m for c in comparisons) for m in metrics]
    fig, axes = plt.subplots(len(metrics), 1, squeeze=False, height_ratios=rows,
                             figsize=(8.5, 0.9 + ROW_INCHES * sum(rows) + 0.9 * len(metrics)))
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        shown = [c for c in comparisons if c.pair.metric == metric]
        for y, c in enumerate(shown):
            sign = 1.0 if c.higher_is_better else -1.0
            colour = COLOURS[c.verdict]
            if math.isfinite(c.mean_diff):
                low, high = sorted((sign * c.ci_low, sign * c.ci_high))
                ax.plot([low, high], [y, y], color=colour, lw=1.6)
                ax.plot(sign * c.mean_diff, y, "o", color=colour, ms=5)
            for r in c.replicates:
                if math.isfinite(r.mean_diff):
                    ax.plot(sign * r.mean_diff, y, "o", mfc="none", mec=colour, ms=4, mew=0.8)
        ax.axvline(0, color="black", lw=0.7)
        ax.set_yticks(range(len(shown)), [_label(c, groups) for c in shown], fontsize=7)
        ax.set_ylim(len(shown) - 0.5, -0.5)
        better = "higher" if shown[0].higher_is_better else "lower"
        ax.set_title(f"{metric_name(metric)} ({better} is better): right of 0 = a better", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    handles = [plt.Line2D([], [], color=colour, marker="o", lw=1.6, label=verdict) for verdict, colour in COLOURS.items()]
    handles.append(plt.Line2D([], [], color="black", marker="o", mfc="none", lw=0, label="a seed replicate"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    return fig


def save_figure(comparisons: list[Comparison], groups: list[Group], path: Path) -> Path:
    fig = draw_figure(comparisons, groups)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
