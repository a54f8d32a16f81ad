"""The study's figure in the paper's style: one bar panel per test, then a Bradley-Terry panel per pairwise test.

Each condition has one colour in every panel, by its place in the study's condition order (the manifest's:
`condition_colours`). MOS panels: a bar per condition (display order), the 95% two-way bootstrap interval as the error bar,
the MOS written on the bar, and between neighbouring conditions a bracket with the Holm-corrected star
level (ns, *, **, ***). Bradley-Terry panels: the centred score per condition with its interval and the
same brackets from the pairwise tests. The figure shows the study's result (`Results.tests`); its caption
(which raters, what the error bars are) is wrapped to the figure's width.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from coz_train.study.analysis.results import Results, TestResult  # noqa: E402
from coz_train.study.analysis.significance import Comparison, neighbours  # noqa: E402
from coz_train.study.ratings import SCALE  # noqa: E402

PALETTE = ("#9e9e9e", "#7fa7d1", "#e07b54", "#6fb07f", "#b28dc7", "#d6b656", "#6cc3c7", "#c76f8c")
PANEL_TITLES = {"image": "image quality MOS", "text": "text MOS"}


def tick_label(condition: str, width: int = 14) -> str:
    """A condition name broken after its `_`, `-` or `+` separators into lines of about `width` characters, so
    that neighbouring labels (e.g. recursive_multiscale-vlm+adapter) do not overlap."""
    lines, line = [], ""
    for part in re.split(r"(?<=[_+-])", condition):
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    return "\n".join([*lines, line])


def _error_bars(values: list[float], lows: list[float], highs: list[float]) -> list[list[float]]:
    """[[below], [above]] for matplotlib's yerr; an undefined interval draws no bar."""
    below = [v - lo if math.isfinite(lo) else 0.0 for v, lo in zip(values, lows, strict=True)]
    above = [hi - v if math.isfinite(hi) else 0.0 for v, hi in zip(values, highs, strict=True)]
    return [[max(b, 0.0) for b in below], [max(a, 0.0) for a in above]]


def _brackets(ax: Axes, comparisons: list[Comparison], x: dict[str, int], top: dict[str, float], gap: float) -> float:
    """Draws a bracket with the stars over each neighbouring pair; returns the highest point drawn."""
    highest = max(top.values(), default=0.0)
    for k, c in enumerate(comparisons):
        y = max(top[c.first], top[c.second]) + gap * (1 + 0.8 * (k % 2))  # alternate heights at shared ends
        x0, x1 = x[c.first] + 0.06, x[c.second] - 0.06
        ax.plot([x0, x0, x1, x1], [y - gap / 3, y, y, y - gap / 3], color="black", lw=0.9)
        ax.text((x0 + x1) / 2, y, c.stars, ha="center", va="bottom", fontsize=9)
        highest = max(highest, y + gap)
    return highest


def condition_colours(conditions: list[str]) -> dict[str, str]:
    """Condition -> its bar colour, by its place in `conditions` (the study's order), the same in every panel."""
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(dict.fromkeys(conditions))}


def _mos_panel(ax: Axes, t: TestResult, title: str, colours: dict[str, str]) -> None:
    names = [m.condition for m in t.mos]
    x = {c: i for i, c in enumerate(names)}
    means = [m.mos for m in t.mos]
    errors = _error_bars(means, [m.ci_low for m in t.mos], [m.ci_high for m in t.mos])
    ax.bar(range(len(names)), means, color=[colours[n] for n in names],
           edgecolor="black", linewidth=0.6, yerr=errors, capsize=4, error_kw={"lw": 1.0})
    for i, m in enumerate(means):
        ax.text(i, m / 2, f"{m:.2f}", ha="center", va="center", fontsize=9)
    top = {m.condition: m.ci_high if math.isfinite(m.ci_high) else m.mos for m in t.mos}
    highest = _brackets(ax, neighbours(t.mos_comparisons, names), x, top, gap=0.18)
    ax.set_ylim(0, max(SCALE[1] + 0.3, highest + 0.1))
    ax.set_yticks(range(SCALE[0], SCALE[1] + 1))
    ax.set_ylabel("MOS (1 Bad ... 5 Excellent)")
    ax.set_xticks(range(len(names)), [tick_label(n) for n in names], fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)


def _bt_panel(ax: Axes, t: TestResult, title: str, colours: dict[str, str]) -> None:  # t.bradley_terry is set
    bt = t.bradley_terry
    names = list(bt.conditions)
    x = {c: i for i, c in enumerate(names)}
    errors = _error_bars(bt.scores, bt.ci_low, bt.ci_high)
    ax.bar(range(len(names)), bt.scores, color=[colours[n] for n in names],
           edgecolor="black", linewidth=0.6, yerr=errors, capsize=4, error_kw={"lw": 1.0})
    ax.axhline(0, color="black", lw=0.6)
    top = {c: max(s + e, s, 0) for c, s, e in zip(names, bt.scores, errors[1], strict=True)}
    bottom = min(min(s - e for s, e in zip(bt.scores, errors[0], strict=True)), 0)
    span = max(max(top.values()) - bottom, 0.5)
    highest = _brackets(ax, neighbours(t.pair_comparisons or [], names), x, top, gap=0.06 * span)
    ax.set_ylim(bottom - 0.08 * span, highest + 0.05 * span)
    ax.set_ylabel("Bradley-Terry score (log-strength)")
    ax.set_xticks(range(len(names)), [tick_label(n) for n in names], fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)


def fit_text(text: Text, width: float) -> Text:
    """`text` wrapped at spaces into lines no wider than `width` pixels (as drawn by its figure's renderer)."""
    renderer = text.get_figure().canvas.get_renderer()
    words = text.get_text()
    chars = len(words)
    while chars > 8 and text.get_window_extent(renderer).width > width:
        chars = min(chars - 1, int(chars * width / text.get_window_extent(renderer).width))
        text.set_text(textwrap.fill(words, max(chars, 8), break_long_words=False))
    return text


def _caption(results: Results, drawn: bool) -> str:
    if drawn:
        return f"with {results.label()}; error bars: 95% bootstrap intervals (raters x items)"
    if results.drop_flagged and results.flags and len(results.flags) == len(results.raters):
        return (f"with {results.label()}: every one of the {len(results.raters)} raters was flagged by the screening "
                "(results.md says why); analyze.drop_flagged=false shows the ratings of all raters")
    return f"with {results.label()}: no ratings to show"


def draw_figure(results: Results) -> Figure:
    panels = []
    for test, t in results.tests.items():
        if t.mos:
            panels.append((_mos_panel, t, PANEL_TITLES.get(test, test)))
    for test, t in results.tests.items():
        if t.bradley_terry is not None:
            panels.append((_bt_panel, t, f"{test}: pairwise (Bradley-Terry)"))
    shown = [m.condition for _, t, _ in panels for m in t.mos] + [
        c for _, t, _ in panels if t.bradley_terry is not None for c in t.bradley_terry.conditions]
    colours = condition_colours([*results.conditions, *shown])
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(3.8 * max(len(panels), 1), 3.6), squeeze=False)
    for k, (ax, (draw, t, title)) in enumerate(zip(axes[0], panels, strict=False)):
        draw(ax, t, f"({chr(ord('a') + k)}) {title}", colours)
    if not panels:
        axes[0][0].text(0.5, 0.5, "no ratings left to show", ha="center", va="center")
        axes[0][0].set_axis_off()
    margin = 0.02 * fig.get_figwidth() * fig.dpi
    caption = fit_text(fig.text(0.5, 0.01, _caption(results, bool(panels)), ha="center", va="bottom", fontsize=8),
                       fig.get_figwidth() * fig.dpi - 2 * margin)
    height = caption.get_window_extent(fig.canvas.get_renderer()).height / (fig.get_figheight() * fig.dpi)
    fig.tight_layout(rect=(0, min(0.01 + height + 0.02, 0.5), 1, 1))
    return fig


def png_bytes(results: Results, dpi: int = 120) -> bytes:
    fig = draw_figure(results)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def save_figure(results: Results, path: Path) -> Path:
    fig = draw_figure(results)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return Path(path)
