"""The checkpoint sweep's summary (`coz_train.eval.checkpoints`): every metric against the training step.

From each step's `results.csv`: the VLM-prompted results as one series per base label
(`recursive_multiscale-vlm`: the base model at step 0, checkpoint-N's adapter at step N), and the
results that do not depend on the prompt VLM (made at step 0 only) as references.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from coz_train.eval.methods import zoom_scales  # noqa: E402
from coz_train.eval.report import draw_rewards, load_history, reward_panels  # noqa: E402
from coz_train.eval.tables import Row, markdown, read_csv  # noqa: E402
from coz_train.sr.prompter import as_base, is_vlm  # noqa: E402

log = logging.getLogger(__name__)

Points = dict[tuple[str, int, str], list[tuple[int, Row]]]  # (series, scale, metric) -> [(step, row)] by step


def collect(done: dict[int, Path]) -> tuple[Points, list[Row]]:
    """The series points of every step, and the step-0 references."""
    points: Points = defaultdict(list)
    references: list[Row] = []
    for step, out in sorted(done.items()):
        for row in read_csv(out / "results.csv"):
            if is_vlm(row.method.partition("-")[2]):
                points[(as_base(row.method), row.scale, row.metric)].append((step, row))
            elif step == 0:
                references.append(row)
    return points, references


def write_table(points: Points, references: list[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("step", "method", "scale", "metric", "mean", "std", "n"))
        rows = [(step, name, scale, metric, row) for (name, scale, metric), pts in points.items() for step, row in pts]
        rows += [(0, r.method, r.scale, r.metric, r) for r in references]
        for step, name, scale, metric, r in sorted(rows, key=lambda x: (x[1], x[0], x[2], x[3])):
            writer.writerow([step, name, scale, metric, f"{r.mean:.6g}", f"{r.std:.6g}", r.n])


def write_markdown(points: Points, references: list[Row], scales: list[int], path: Path) -> None:
    """Per metric: one row per (series, step) and per reference, scales as columns, best in bold."""
    from coz_train.image_quality import higher_is_better

    rows = [Row(f"{name} @ step {step}", scale, metric, r.mean, r.std, r.n)
            for (name, scale, metric), pts in points.items() for step, r in pts]
    rows += [Row(f"{r.method} (reference)", r.scale, r.metric, r.mean, r.std, r.n) for r in references]
    labels = sorted({r.method for r in rows if " @ step " in r.method},
                    key=lambda m: (m.split(" @ step ")[0], int(m.split(" @ step ")[1])))
    labels += list(dict.fromkeys(r.method for r in rows if r.method.endswith("(reference)")))
    text = markdown(rows, {r.metric: higher_is_better(r.metric) for r in rows}, {}, labels, scales)
    path.write_text(text.replace("# Results", "# Results per checkpoint", 1))


def draw_curves(points: Points, references: list[Row], scales: list[int], history: list[dict] | None,
                path: Path) -> None:
    from coz_train.image_quality import higher_is_better

    metrics = list(dict.fromkeys(metric for _, _, metric in points))
    names = list(dict.fromkeys(name for name, _, _ in points)) + list(dict.fromkeys(r.method for r in references))
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    panels = len(reward_panels(history)) if history else 0
    columns = max(len(scales), panels)
    fig = plt.figure(figsize=(3.6 * columns, 3.0 * (len(metrics) + (1 if panels else 0))), layout="constrained")
    last = max(step for pts in points.values() for step, _ in pts)
    xlim = (-0.05 * max(last, 1), last + 0.05 * max(last, 1))  # every panel on the same step axis
    if panels:
        top, bottom = fig.subfigures(2, 1, height_ratios=[1, len(metrics)])
        reward_axes = list(top.subplots(1, panels, squeeze=False)[0])
        draw_rewards(reward_axes, history)
        for ax in reward_axes:
            ax.set_xlim(*xlim)
    else:
        bottom = fig
    axes = bottom.subplots(len(metrics), len(scales), squeeze=False)
    for i, metric in enumerate(metrics):
        for j, scale in enumerate(scales):
            ax = axes[i][j]
            for name in names:
                pts = points.get((name, scale, metric), [])
                if pts:
                    ax.plot([s for s, _ in pts], [r.mean for _, r in pts], marker="o", color=colours[name], label=name)
            for r in references:
                if r.metric == metric and r.scale == scale:
                    ax.axhline(r.mean, ls="--", lw=1, color=colours[r.method], label=r.method)
            if not ax.has_data():  # a full-reference metric beyond the original's resolution
                ax.text(0.5, 0.5, "no value at this zoom", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            better = "higher" if higher_is_better(metric) else "lower"
            ax.set_title(f"{metric} at {scale}x ({better} is better)", fontsize=9)
            ax.set_xlabel("step")
            ax.set_xlim(*xlim)
    axes[0][-1].legend(fontsize=7)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def write_summary(run_dir: Path, sweep_dir: Path, done: dict[int, Path], ev: DictConfig) -> None:
    points, references = collect(done)
    scales = zoom_scales(ev)
    try:
        history = load_history(run_dir)
    except (FileNotFoundError, ValueError) as error:
        log.info("No reward curves beside the metrics: %s", error)
        history = None
    write_table(points, references, sweep_dir / "checkpoint_results.csv")
    write_markdown(points, references, scales, sweep_dir / "checkpoint_results.md")
    draw_curves(points, references, scales, history, sweep_dir / "checkpoint_curves.png")
    log.info("Steps %s: %s", sorted(done), (sweep_dir / "checkpoint_curves.png").resolve())
