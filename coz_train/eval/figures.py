"""Figures: each sample's zoom chains side by side (each state framing the window the next step zooms into),
and each metric against zoom scale."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from coz_train.eval.tables import Row  # noqa: E402
from coz_train.printable import printable  # noqa: E402
from coz_train.sr.chain import IN_PREVIOUS, Chain  # noqa: E402

WINDOW_COLOUR = "#ff3030"


def next_windows(chain: Chain) -> list[tuple[float, float, float, float]]:
    """For k = 1..N, the window step k zoomed into, in the pixels of state k-1 (the state it is drawn on)."""
    if chain.boxes_in == IN_PREVIOUS:
        return [tuple(float(v) for v in box) for box in chain.boxes]  # type: ignore[misc]
    size = chain.states[0].width
    previous, boxes = (0.0, 0.0, float(size), float(size)), []
    for window in chain.windows():
        unit = size / (previous[2] - previous[0])  # state k-1 pixels per start pixel
        boxes.append(tuple((v - previous[i % 2]) * unit for i, v in enumerate(window)))
        previous = window
    return boxes  # type: ignore[return-value]


def draw_window(ax: plt.Axes, box: tuple[float, float, float, float]) -> None:
    """The window as a rectangle on the pixel edges (imshow puts pixel centres on whole numbers)."""
    left, top, right, bottom = box
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor=WINDOW_COLOUR,
                           linewidth=1.0))


def draw_chains(chains: list[Chain], scale: int) -> Figure:
    """Rows = methods, columns = the start and every zoom step, the step's prompt under it (control characters
    escaped: `coz_train.printable`); on each state a rectangle frames the window the next step zoomed into
    (`Chain.boxes`; none for a chain that records no windows)."""
    steps = max(len(chain.states) for chain in chains) - 1  # a `full` chain may have fewer steps: blank cells
    fig, axes = plt.subplots(len(chains), steps + 1, figsize=(2.2 * (steps + 1), 2.6 * len(chains)), squeeze=False)
    for row, chain in enumerate(chains):
        windows = next_windows(chain) if chain.boxes else []
        for col, state in enumerate(chain.states):
            ax = axes[row][col]
            ax.imshow(state)
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(windows):
                draw_window(ax, windows[col])
            if col == 0:
                ax.set_ylabel(chain.method, fontsize=8)
            elif chain.prompts[col - 1]:
                ax.set_xlabel(textwrap.fill(printable(chain.prompts[col - 1]), 28)[:140], fontsize=6)
        for col in range(len(chain.states), steps + 1):
            axes[row][col].axis("off")
    for col, ax in enumerate(axes[0]):
        ax.set_title("input" if col == 0 else f"{scale**col}x", fontsize=9)
    fig.tight_layout()
    return fig


def chain_figure(chains: list[Chain], scale: int, path: Path) -> None:
    """`draw_chains` saved to `path`."""
    fig = draw_chains(chains, scale)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def metric_plots(rows: list[Row], higher_is_better: dict[str, bool], path: Path) -> None:
    """One panel per metric: mean value against zoom scale (log axis), one line per method."""
    metrics = list(dict.fromkeys(r.metric for r in rows))
    if not metrics:
        return
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for method in dict.fromkeys(r.method for r in rows if r.metric == metric):
            points = sorted((r.scale, r.mean) for r in rows if r.metric == metric and r.method == method)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("zoom")
        ax.set_title(f"{metric} ({'higher' if higher_is_better.get(metric, True) else 'lower'} is better)", fontsize=9)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
