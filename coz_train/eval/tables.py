"""Results tables: `results.csv` (method, scale, metric, mean, std, n) and `results.md`.

`results.md` has one table per metric, methods as rows and zoom scales as columns, with the best
value per scale in bold (lower is better for NIQE, PIQE, BRISQUE and the judge's `hallucination`;
higher for the rest).
Metrics that could not be computed are listed once with the reason, never shown as numbers; a
score that is undefined for one image (NaN) is left out of that cell's mean and its n.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CSV_COLUMNS = ("method", "scale", "metric", "mean", "std", "n")
LOWER_IS_BETTER = {"hallucination"}  # metrics not of coz_train.image_quality: the VLM judge's rate (eval/judge/)


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` is better: False for `LOWER_IS_BETTER`, else the image-quality metric's own
    direction (`coz_train.image_quality.higher_is_better`)."""
    if metric in LOWER_IS_BETTER:
        return False
    from coz_train.image_quality import higher_is_better as image_quality_higher

    return image_quality_higher(metric)


@dataclass(frozen=True)
class Row:
    method: str
    scale: int
    metric: str
    mean: float
    std: float
    n: int


class Results:
    """Per-image metric values, aggregated into rows."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, int, str], list[float]] = defaultdict(list)

    def add(self, method: str, scale: int, metric: str, value: float) -> None:
        self.values[(method, scale, metric)].append(float(value))

    def rows(self) -> list[Row]:
        rows = []
        for (method, scale, metric), all_values in self.values.items():
            values = [v for v in all_values if not math.isnan(v)]  # undefined scores (NIQE of a flat image)
            if not values:
                continue
            data = np.asarray(values, dtype=np.float64)  # an inf (PSNR of identical images) stays inf
            std = float(data.std()) if np.isfinite(data).all() else 0.0
            rows.append(Row(method, scale, metric, float(data.mean()), std, len(values)))
        return rows


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow([r.method, r.scale, r.metric, f"{r.mean:.6g}", f"{r.std:.6g}", r.n])


def read_csv(path: Path) -> list[Row]:
    with path.open() as f:
        return [
            Row(d["method"], int(d["scale"]), d["metric"], float(d["mean"]), float(d["std"]), int(d["n"]))
            for d in csv.DictReader(f)
        ]


def markdown(rows: list[Row], higher_is_better: dict[str, bool], unavailable: dict[str, str],
             methods: list[str], scales: list[int]) -> str:
    lines = ["# Results", "", "Mean over images (n in parentheses when not every image has a value); best per scale in bold.", ""]
    by_key = {(r.method, r.scale, r.metric): r for r in rows}
    for metric in dict.fromkeys(r.metric for r in rows):
        better = "higher" if higher_is_better.get(metric, True) else "lower"
        lines += [f"## {metric} ({better} is better)", "", "| method | " + " | ".join(f"{s}x" for s in scales) + " |",
                  "|---|" + "---|" * len(scales)]
        best: dict[int, float] = {}
        for s in scales:
            values = [by_key[(m, s, metric)].mean for m in methods if (m, s, metric) in by_key]
            values = [v for v in values if not math.isnan(v)]
            if values:
                best[s] = max(values) if higher_is_better.get(metric, True) else min(values)
        counts = {r.n for r in rows if r.metric == metric}
        for m in methods:
            cells = []
            for s in scales:
                r = by_key.get((m, s, metric))
                if r is None:
                    cells.append("-")
                    continue
                text = f"{r.mean:.4g}" + (f" ({r.n})" if len(counts) > 1 else "")
                cells.append(f"**{text}**" if best.get(s) == r.mean else text)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    if unavailable:
        lines += ["## Unavailable metrics", ""]
        lines += [f"- {name}: {reason}" for name, reason in unavailable.items()]
        lines.append("")
    return "\n".join(lines)
